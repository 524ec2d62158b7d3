// Copies the compiled library (dist/client.js) to ../../web/mythos-client.js,
// which the broker embeds and serves as /assets/mythos-client.js.
//   node scripts/web-bundle.mjs clean   remove dist/
//   node scripts/web-bundle.mjs write   write web/mythos-client.js from dist/client.js
//   node scripts/web-bundle.mjs check   exit 1 when web/mythos-client.js differs from dist/client.js
import { readFileSync, writeFileSync, rmSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = resolve(root, "dist");
const target = resolve(root, "../../web/mythos-client.js");
const HEADER =
  "// GENERATED FILE - do not edit. Source: clients/js/src/client.ts (@mythos/client).\n" +
  "// Regenerate with `npm ci && npm run build` in clients/js/; `npm run check` there fails when this copy is stale.\n" +
  "// Served by mythos-broker as /assets/mythos-client.js: import { MythosClient } from \"/assets/mythos-client.js\".\n";

const bundle = () => HEADER + readFileSync(resolve(dist, "client.js"), "utf8");

switch (process.argv[2]) {
  case "clean":
    rmSync(dist, { recursive: true, force: true });
    break;
  case "write":
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, bundle());
    console.log(`wrote ${target}`);
    break;
  case "check": {
    let current = null;
    try {
      current = readFileSync(target, "utf8");
    } catch {
      /* missing */
    }
    if (current !== bundle()) {
      console.error(`${target} is stale or missing: run \`npm run build\` in clients/js and commit it`);
      process.exit(1);
    }
    console.log(`${target} is up to date`);
    break;
  }
  default:
    console.error("usage: web-bundle.mjs clean|write|check");
    process.exit(2);
}

// Starting and stopping the demo example (a broker with the demo world), Redis,
// and publishing through the broker's HTTP API, for the browser tests.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";

export const ROOT = path.resolve(import.meta.dirname, "../../..");
export const BIN = process.env.MYTHOS_DEMO_BIN ?? path.join(ROOT, "target/debug/examples/demo");
const READY = /demo world ready/;
const SERVICE_TOKEN = /^export SERVICE=(\S+)$/m;

/** Every child started here, killed when this test process exits however it exits. */
const children = new Set();
function killAll() {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
}
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    killAll();
    process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
  });
}

/**
 * Spawns `cmd` so that it dies with this process even if this process is
 * SIGKILLed (Linux: `setpriv --pdeathsig KILL`, util-linux), and tracks it.
 */
function spawnChild(cmd, args, options) {
  const child = existsSync("/usr/bin/setpriv")
    ? spawn("/usr/bin/setpriv", ["--pdeathsig", "KILL", "--", cmd, ...args], options)
    : spawn(cmd, args, options);
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

/**
 * The environment for a spawned broker: this process's, minus every MYTHOS_*
 * variable (a developer's `export MYTHOS_REDIS_URL=...` must not reach the
 * broker under test), plus what the test sets.
 */
export function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("MYTHOS_")) env[k] = v;
  return { ...env, ...extra };
}

/** How often a start on a port someone else took first is retried on a new one. */
const PORT_ATTEMPTS = 5;

/** A TCP port nobody listens on right now. */
export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const { port } = srv.address();
  srv.close();
  await once(srv, "close");
  return port;
}

/** Resolves when `test(text())` holds, rejects when `child` exits first or after `ms`. */
function waitForOutput(child, text, test, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    const check = () => test(text()) && done(null);
    const exited = (code) => done(Object.assign(new Error(`${what}: the process exited with ${code}`), { exited: true }));
    function done(err) {
      clearTimeout(timer);
      child.stdout.off("data", check);
      child.off("exit", exited);
      if (err) reject(err);
      else resolve();
    }
    child.stdout.on("data", check);
    child.on("exit", exited);
    check();
  });
}

async function stopChild(child, ms = 10000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), ms);
  await exited;
  clearTimeout(timer);
}

/**
 * Runs `examples/demo --bind 127.0.0.1:<port>` and waits for the demo
 * world. Returns {url, port, serviceToken, output(), stop()}. The readiness
 * line comes from our own child (which exits if it cannot bind), so a port
 * someone else holds is never mistaken for ours: without an explicit `port`
 * the start is retried on a new one; with one (a restart) it fails.
 */
export async function startBroker({ port, env = {} } = {}) {
  if (!existsSync(BIN)) throw new Error(`no demo binary at ${BIN}: run \`cargo build --example demo\` or set MYTHOS_DEMO_BIN`);
  const fixed = port !== undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      return await startBrokerOn(fixed ? port : await freePort(), env);
    } catch (e) {
      if (fixed || attempt >= PORT_ATTEMPTS || !e.exited) throw e;
    }
  }
}

async function startBrokerOn(port, env) {
  const child = spawnChild(BIN, ["--bind", `127.0.0.1:${port}`], {
    env: cleanEnv({ MYTHOS_LOG: "warn", ...env }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (s) => (out += s));
  child.stderr.on("data", (s) => (out += s));
  try {
    await waitForOutput(child, () => out, (t) => READY.test(t), 30000, "the demo world");
  } catch (e) {
    await stopChild(child);
    const err = new Error(`${e.message}\n--- broker output ---\n${out}`);
    err.exited = e.exited === true;
    throw err;
  }
  const serviceToken = out.match(SERVICE_TOKEN)?.[1];
  if (!serviceToken) {
    await stopChild(child);
    throw new Error(`no service token in the broker's output:\n${out}`);
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    serviceToken,
    output: () => out,
    stop: () => stopChild(child),
  };
}

/** Runs a throw-away redis-server (no persistence) on a free port (retried on a new one if taken). */
export async function startRedis(bin = process.env.REDIS_SERVER ?? "redis-server") {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const child = spawnChild(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: cleanEnv(),
    });
    let out = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (s) => (out += s));
    const failed = once(child, "error").then(([e]) => {
      throw new Error(`cannot run ${bin}: ${e.message} (apt-get install -y redis-server, or set REDIS_SERVER)`);
    });
    try {
      // The line comes from our child's own log: it is the one listening.
      await Promise.race([
        waitForOutput(child, () => out, (t) => /Ready to accept connections/.test(t), 10000, "redis-server"),
        failed,
      ]);
      return { url: `redis://127.0.0.1:${port}`, stop: () => stopChild(child) };
    } catch (e) {
      await stopChild(child);
      if (!e.exited || attempt >= PORT_ATTEMPTS) throw new Error(`${e.message}\n--- redis-server output ---\n${out}`);
    }
  }
}

/** `POST /v1/publish` with the service token; returns the answer's JSON. */
export async function publish(broker, body) {
  const res = await fetch(`${broker.url}/v1/publish`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${broker.serviceToken}` },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`publish: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

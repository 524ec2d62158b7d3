// Starting and stopping the mythos-broker binary (`demo` subcommand), Redis,
// and publishing through the broker's HTTP API, for the browser tests.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";

export const ROOT = path.resolve(import.meta.dirname, "../../..");
export const BIN = process.env.MYTHOS_BIN ?? path.join(ROOT, "target/debug/mythos-broker");
const READY = /demo world ready/;
const SERVICE_TOKEN = /dev mode: service token: (\S+)/;

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
    const exited = (code) => done(new Error(`${what}: the process exited with ${code}`));
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
 * Runs `mythos-broker --bind 127.0.0.1:<port> demo` and waits for the demo
 * world. Returns {url, port, serviceToken, output(), stop()}.
 */
export async function startBroker({ port, env = {} } = {}) {
  if (!existsSync(BIN)) throw new Error(`no broker binary at ${BIN}: run \`cargo build\` or set MYTHOS_BIN`);
  port ??= await freePort();
  const child = spawn(BIN, ["--bind", `127.0.0.1:${port}`, "demo"], {
    env: { ...process.env, MYTHOS_LOG: "warn", ...env },
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
    throw new Error(`${e.message}\n--- broker output ---\n${out}`);
  }
  const serviceToken = out.match(SERVICE_TOKEN)?.[1];
  if (!serviceToken) throw new Error(`no service token in the broker's output:\n${out}`);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    serviceToken,
    output: () => out,
    stop: () => stopChild(child),
  };
}

/** Runs a throw-away redis-server (no persistence) on a free port. */
export async function startRedis(bin = process.env.REDIS_SERVER ?? "redis-server") {
  const port = await freePort();
  const child = spawn(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (s) => (out += s));
  const failed = once(child, "error").then(([e]) => {
    throw e;
  });
  await Promise.race([
    waitForOutput(child, () => out, (t) => /Ready to accept connections/.test(t), 10000, "redis-server"),
    failed,
  ]);
  return { url: `redis://127.0.0.1:${port}`, stop: () => stopChild(child) };
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

// Test helpers for game servers' JS test suites (the same helper as the Rust
// crate's `mythos_broker::testkit`): read a recording made by
// `mythos-broker export`, replay it into a player's log through a broker's
// `POST /v1/publish` (ids `replay:<player>:<seq>`, so a replay run twice appends
// once), collect what a MythosClient receives, and assert that view:
// (event_type, data) in order, with dense sequence numbers (no gap, no
// duplicate). `startBroker` runs `mythos-broker --dev` on the embedded engine.
//
// Owns: those helpers. Must not touch: the client library (client.ts) — it is
// used as any application uses it — nor the web bundle (this file is not part
// of web/mythos-client.js).
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import type { EventEnvelope, FetchLike, MythosClient } from "./client.js";

/** Longest recording line accepted, and most events (the broker's own bounds). */
export const MAX_LINE = 16 * 1024 * 1024 + 4096;
export const MAX_EVENTS = 1_000_000;

/** A recording line that is not an event envelope; `line` is 1-based. */
export class RecordingError extends Error {
  constructor(public readonly line: number, message: string) {
    super(`line ${line}: ${message}`);
    this.name = "RecordingError";
  }
}

const ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Parses JSON lines as `mythos-broker export` writes them; throws RecordingError naming the line. */
export function parseRecording(text: string): EventEnvelope[] {
  const out: EventEnvelope[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = i + 1;
    const raw = lines[i].replace(/\r$/, "");
    if (raw.trim() === "") continue;
    if (raw.length > MAX_LINE) throw new RecordingError(line, `longer than ${MAX_LINE} bytes`);
    if (out.length >= MAX_EVENTS) throw new RecordingError(line, `more than ${MAX_EVENTS} events`);
    let v: any;
    try {
      v = JSON.parse(raw);
    } catch (e) {
      throw new RecordingError(line, `not JSON (${(e as Error).message})`);
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new RecordingError(line, "not an event envelope");
    if (typeof v.event_type !== "string" || v.event_type.length < 1 || v.event_type.length > 128)
      throw new RecordingError(line, "`event_type` must be 1 to 128 characters");
    if (!Number.isSafeInteger(v.sequence_number) || v.sequence_number < 1)
      throw new RecordingError(line, "`sequence_number` must be a positive integer");
    if (typeof v.player_id !== "string" || !ID.test(v.player_id)) throw new RecordingError(line, "`player_id` must match [A-Za-z0-9_-]{1,64}");
    if (v.room_id != null && (typeof v.room_id !== "string" || !ID.test(v.room_id)))
      throw new RecordingError(line, "`room_id` must match [A-Za-z0-9_-]{1,64}");
    if (typeof v.timestamp !== "string" || Number.isNaN(Date.parse(v.timestamp)))
      throw new RecordingError(line, "`timestamp` is not an RFC 3339 time");
    if (!("data" in v)) throw new RecordingError(line, "`data` is missing");
    const prev = out[out.length - 1];
    if (prev && v.player_id !== prev.player_id)
      throw new RecordingError(line, `player_id \`${v.player_id}\` differs from \`${prev.player_id}\` (a recording is one player's log)`);
    if (prev && v.sequence_number <= prev.sequence_number)
      throw new RecordingError(line, `sequence number ${v.sequence_number} does not come after ${prev.sequence_number}`);
    out.push({
      event_type: v.event_type,
      sequence_number: v.sequence_number,
      timestamp: v.timestamp,
      player_id: v.player_id,
      room_id: v.room_id ?? null,
      data: v.data,
      id: v.id ?? null,
    });
  }
  return out;
}

/** What a client should see: [event_type, data] in order. */
export function viewOf(events: readonly EventEnvelope[]): Array<[string, unknown]> {
  return events.map((e) => [e.event_type, e.data]);
}

/** The idempotency id a replayed event gets (as `mythos-broker replay` gives it). */
export function replayId(e: EventEnvelope): string {
  return `replay:${e.player_id}:${e.sequence_number}`;
}

/** When each event is sent, in ms after the start: the recorded gaps divided by `speed` ("max": none). */
export function replayDelays(events: readonly EventEnvelope[], speed: number | "max" = "max"): number[] {
  if (events.length === 0) return [];
  const start = Date.parse(events[0].timestamp);
  let latest = start;
  return events.map((e) => {
    latest = Math.max(latest, Date.parse(e.timestamp));
    return speed === "max" ? 0 : (latest - start) / Math.max(1, speed);
  });
}

export interface ReplayOptions {
  /** `http://host:port` of the broker. */
  baseUrl: string;
  /** A service or admin token. */
  token: string;
  speed?: number | "max";
  fetch?: FetchLike;
  sleep?: (ms: number) => Promise<void>;
}

/** Publishes `events` to `toPlayer`, one at a time, in order; resolves with the sequence numbers given. */
export async function replayRecording(options: ReplayOptions, events: readonly EventEnvelope[], toPlayer: string): Promise<number[]> {
  if (!ID.test(toPlayer)) throw new Error("toPlayer must match [A-Za-z0-9_-]{1,64}");
  const fetch = options.fetch ?? (globalThis.fetch as unknown as FetchLike);
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const delays = replayDelays(events, options.speed ?? "max");
  const base = options.baseUrl.replace(/\/$/, "");
  const seqs: number[] = [];
  let waited = 0;
  for (let i = 0; i < events.length; i++) {
    const e = events[i];
    if (delays[i] > waited) {
      await sleep(delays[i] - waited);
      waited = delays[i];
    }
    const body: Record<string, unknown> = { to: { player: toPlayer }, event_type: e.event_type, data: e.data, id: replayId(e) };
    if (e.room_id != null) body.room_id = e.room_id;
    const res = await fetch(`${base}/v1/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${options.token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer: any = await res.json().catch(() => null);
    if (!res.ok) throw new Error(`event ${i + 1} (recorded ${e.sequence_number}) was refused: ${res.status} ${JSON.stringify(answer)}`);
    seqs.push(answer?.deliveries?.[0]?.sequence_number);
  }
  return seqs;
}

/** Resolves with the next `n` events `client` emits, or rejects after `timeoutMs` of waiting in all. */
export function collectEvents(client: MythosClient, n: number, timeoutMs = 10_000): Promise<EventEnvelope[]> {
  return new Promise((resolve, reject) => {
    const got: EventEnvelope[] = [];
    if (n === 0) return resolve(got);
    const timer = setTimeout(() => {
      off();
      reject(new Error(`received ${got.length} of ${n} events within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = client.on("event", (e: EventEnvelope) => {
      got.push(e);
      if (got.length >= n) {
        clearTimeout(timer);
        off();
        resolve(got);
      }
    });
  });
}

/** Stable JSON (keys sorted) for comparing `data`. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object")
    return `{${Object.keys(v as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as any)[k])}`)
      .join(",")}}`;
  return JSON.stringify(v);
}

/** Throws unless `received` is exactly `expected` ([event_type, data] in order) with dense sequence numbers. */
export function assertView(received: readonly EventEnvelope[], expected: ReadonlyArray<readonly [string, unknown]>): void {
  if (received.length !== expected.length) throw new Error(`received ${received.length} events, expected ${expected.length}`);
  for (let i = 0; i < received.length; i++) {
    const r = received[i];
    if (i > 0 && r.sequence_number !== received[i - 1].sequence_number + 1)
      throw new Error(`event ${i + 1}: sequence number ${r.sequence_number} after ${received[i - 1].sequence_number} (a gap or a duplicate)`);
    const [type, data] = expected[i];
    if (r.event_type !== type || canonical(r.data) !== canonical(data))
      throw new Error(`event ${i + 1}: got (${r.event_type}, ${canonical(r.data)}), expected (${type}, ${canonical(data)})`);
  }
}

/** A JWT (HS256) for `sub` with `role`, signed with `secret`. */
export function mintToken(secret: string, sub: string, role: "player" | "service" | "admin", ttlSeconds = 3600): string {
  const b64 = (v: string | Buffer) => Buffer.from(v).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = b64(JSON.stringify({ sub, role, iat: now, exp: now + ttlSeconds }));
  const sig = createHmac("sha256", secret).update(`${head}.${claims}`).digest("base64url");
  return `${head}.${claims}.${sig}`;
}

export interface RunningBroker {
  baseUrl: string;
  /** The generated JWT secret (dev mode), for minting tokens. */
  secret: string;
  token(sub: string, role: "player" | "service" | "admin"): string;
  stop(): Promise<void>;
}

/** Runs `binary --dev --bind 127.0.0.1:0` (the embedded engine) and resolves once it listens. */
export function startBroker(binary: string, timeoutMs = 20_000): Promise<RunningBroker> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(binary, ["--dev", "--bind", "127.0.0.1:0"], {
      env: { PATH: process.env.PATH ?? "", MYTHOS_LOG: "warn" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    let secret: string | undefined;
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`${binary} did not start within ${timeoutMs} ms: ${out}`));
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${binary}: ${e.message}`));
    });
    child.stdout?.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      secret ??= /MYTHOS_JWT_SECRET=(\S+)/.exec(out)?.[1];
      const addr = /listening on (http:\/\/\S+)/.exec(out)?.[1];
      if (addr && secret) {
        clearTimeout(timer);
        const s = secret;
        resolve({
          baseUrl: addr,
          secret: s,
          token: (sub, role) => mintToken(s, sub, role),
          stop: () =>
            new Promise<void>((done) => {
              if (child.exitCode !== null) return done();
              child.once("exit", () => done());
              child.kill("SIGTERM");
            }),
        });
      }
    });
  });
}

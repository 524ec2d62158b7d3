// Test doubles: a manual clock, a scripted WebSocket and a routed fetch. No real I/O, no sleeps.
import type { Clock, EventEnvelope, FetchInit, FetchLike, ResponseLike } from "../client.js";

/** Lets pending promise callbacks run (microtasks and one macrotask turn); never waits on time. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

export class FakeClock implements Clock {
  private seq = 0;
  private timers = new Map<number, { at: number; fn: () => void; order: number }>();
  constructor(public current = 1_700_000_000_000) {}
  now(): number {
    return this.current;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.current + Math.max(0, ms), fn, order: id });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  /** Due times of the pending timers, relative to now, sorted. */
  pending(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.current).sort((a, b) => a - b);
  }
  /** Moves time forward, running every timer that falls due (in order), flushing promises after each. */
  async advance(ms: number): Promise<void> {
    const target = this.current + ms;
    await flush();
    for (;;) {
      let next: [number, { at: number; fn: () => void; order: number }] | undefined;
      for (const entry of this.timers) {
        if (entry[1].at > target) continue;
        if (!next || entry[1].at < next[1].at || (entry[1].at === next[1].at && entry[1].order < next[1].order)) next = entry;
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.current = next[1].at;
      next[1].fn();
      await flush();
    }
    this.current = target;
  }
}

export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  /** Answer `ping` with `pong` like the broker does. */
  static autoPong = true;
  static reset(): void {
    FakeWebSocket.instances = [];
    FakeWebSocket.autoPong = true;
  }
  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!ws) throw new Error("no WebSocket was opened");
    return ws;
  }

  readyState = 0;
  onopen: ((ev: any) => void) | null = null;
  onmessage: ((ev: any) => void) | null = null;
  onclose: ((ev: any) => void) | null = null;
  onerror: ((ev: any) => void) | null = null;
  sent: any[] = [];
  closedWith: number | null = null;
  readonly params: URLSearchParams;

  constructor(public url: string) {
    this.params = new URL(url).searchParams;
    FakeWebSocket.instances.push(this);
  }
  send(data: string): void {
    if (this.readyState !== 1) throw new Error("not open");
    const frame = JSON.parse(data);
    this.sent.push(frame);
    if (frame.type === "ping" && FakeWebSocket.autoPong) queueMicrotask(() => this.readyState === 1 && this.frame({ type: "pong" }));
  }
  close(code = 1000): void {
    this.closedWith = code;
    this.readyState = 3;
  }

  // -- server side --
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  /** Opens and sends the welcome frame. */
  accept(welcome: Partial<{ player_id: string; session_id: string; last_sequence_number: number; acked: number }> = {}): void {
    this.open();
    this.frame({ type: "welcome", player_id: "alice", session_id: "s1", last_sequence_number: 0, acked: 0, ...welcome });
  }
  frame(obj: object): void {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  event(seq: number, eventType = "game_tick", data: unknown = {}): void {
    this.frame({ type: "event", ...envelope(seq, eventType, data) });
  }
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
  /** Frames of the given type sent by the client. */
  sentOf(type: string): any[] {
    return this.sent.filter((f) => f.type === type);
  }
}

export function envelope(seq: number, eventType = "game_tick", data: unknown = {}): EventEnvelope {
  return {
    event_type: eventType,
    sequence_number: seq,
    timestamp: "2026-11-23T10:30:00.000Z",
    player_id: "alice",
    room_id: "tavern",
    data,
    id: null,
  };
}

/** An unsigned JWT with the given claims (the client never verifies signatures). */
export function jwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}

/** A token issued at `nowMs` living `ttlS` seconds. */
export function tokenAt(nowMs: number, ttlS = 3600, sub = "alice"): string {
  const iat = Math.floor(nowMs / 1000);
  return jwt({ sub, iat, exp: iat + ttlS, role: "player" });
}

export function jsonResponse(status: number, body: unknown): ResponseLike {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } }) as ResponseLike;
}

/** A text/event-stream body the test writes to. */
export function sseStream(): { response: ResponseLike; write(text: string): void; end(): void } {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const stream = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
  const enc = new TextEncoder();
  return {
    response: new Response(stream, { status: 200, headers: { "Content-Type": "text/event-stream" } }) as ResponseLike,
    write: (text) => controller.enqueue(enc.encode(text)),
    end: () => controller.close(),
  };
}

export function sseEvent(seq: number, eventType = "game_tick", data: unknown = {}): string {
  return `id: ${seq}\nevent: ${eventType}\ndata: ${JSON.stringify(envelope(seq, eventType, data))}\n\n`;
}

export interface Call {
  url: string;
  path: string;
  init: FetchInit;
}

/** A fetch that records calls and answers from a handler keyed by path. */
export function fakeFetch(handler: (call: Call) => ResponseLike | Promise<ResponseLike>): FetchLike & { calls: Call[] } {
  const calls: Call[] = [];
  const f = (async (url: string, init: FetchInit = {}) => {
    const call = { url, path: new URL(url).pathname, init };
    calls.push(call);
    return handler(call);
  }) as FetchLike & { calls: Call[] };
  f.calls = calls;
  return f;
}

/**
 * @mythos/client: browser and Node client for the mythos-broker wire protocol v1.
 *
 * Deliberately one module without imports, so that the compiled file can be served
 * as-is to browsers (`/assets/mythos-client.js`). See clients/js/README.md.
 */

// ---------------------------------------------------------------------------
// Types of the wire protocol
// ---------------------------------------------------------------------------

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "disconnected";
export type Transport = "ws" | "sse";

/** The event envelope (protocol section 3), identical over SSE and WebSocket. */
export interface EventEnvelope {
  event_type: string;
  sequence_number: number;
  timestamp: string;
  player_id: string;
  room_id: string | null;
  data: unknown;
  /** The publisher's idempotency key, or null. */
  id: string | null;
}

/** First frame of every WebSocket connection. */
export interface Welcome {
  player_id: string;
  session_id: string;
  last_sequence_number: number;
  acked: number;
}

/** Body of `POST /v1/auth/login` and `POST /v1/auth/refresh`. */
export interface TokenResponse {
  access_token: string;
  token_type: string;
  /** Seconds. */
  expires_in: number;
  player_id: string;
}

export interface ResyncInfo {
  /** `oldest_available`: the first sequence number that will be replayed. */
  oldestAvailable: number;
}

/** Every error the library reports: a broker error body, an error frame, or a client-side condition. */
export class MythosError extends Error {
  /** Broker code (`invalid_credentials`, `rate_limited`, ...) or a client code (see README). */
  readonly code: string;
  /** HTTP status, for errors from an HTTP response. */
  readonly status?: number;
  /** Command id, for errors answering a command or chat message. */
  readonly id?: string;
  /** WebSocket close code, for errors caused by a close. */
  readonly closeCode?: number;
  /** From `rate_limited` error frames. */
  readonly retryAfterMs?: number;

  constructor(
    code: string,
    message: string,
    extra: { status?: number; id?: string; closeCode?: number; retryAfterMs?: number } = {},
  ) {
    super(message);
    this.name = "MythosError";
    this.code = code;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.id !== undefined) this.id = extra.id;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
  }
}

// ---------------------------------------------------------------------------
// Injectable environment (defaults: the globals)
// ---------------------------------------------------------------------------

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The subset of the WHATWG WebSocket the client uses (browser `WebSocket` or the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketCtor = new (url: string) => WebSocketLike;

export interface FetchInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}
export interface ResponseLike {
  readonly ok: boolean;
  readonly status: number;
  readonly body: ReadableStream<Uint8Array> | null;
  json(): Promise<any>;
}
export type FetchLike = (url: string, init?: FetchInit) => Promise<ResponseLike>;

const WS_OPEN = 1;
const MAX_TIMER_MS = 2 ** 31 - 1;
const noop = (): void => undefined;

const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

function defaultFetch(): FetchLike {
  const f = (globalThis as { fetch?: FetchLike }).fetch;
  if (!f) return () => Promise.reject(new MythosError("no_fetch", "no global fetch: pass options.fetch"));
  return f.bind(globalThis);
}

/** Strips trailing slashes; resolves a relative base against `location` in browsers. */
function normalizeBase(baseUrl: string): string {
  let b = baseUrl.replace(/\/+$/, "");
  const loc = (globalThis as { location?: { href: string } }).location;
  if (!/^[a-z][a-z0-9+.-]*:/i.test(b) && loc) b = new URL(b || "/", loc.href).href.replace(/\/+$/, "");
  return b;
}

// ---------------------------------------------------------------------------
// HTTP: login, refresh
// ---------------------------------------------------------------------------

async function errorFromResponse(res: ResponseLike): Promise<MythosError> {
  let code = `http_${res.status}`;
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error && typeof body.error.code === "string") {
      code = body.error.code;
      message = typeof body.error.message === "string" ? body.error.message : code;
    }
  } catch {
    /* not JSON: keep the generic code */
  }
  return new MythosError(code, message, { status: res.status });
}

async function postJson(fetchImpl: FetchLike, url: string, body: unknown, token?: string): Promise<ResponseLike> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (token !== undefined) headers.Authorization = `Bearer ${token}`;
  let res: ResponseLike;
  try {
    res = await fetchImpl(url, { method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new MythosError("network_error", `POST ${url}: ${(e as Error)?.message ?? e}`);
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res;
}

/**
 * `POST /v1/auth/login`. Rejects with a MythosError (`invalid_credentials`, ...).
 * `remember: true` (extension) also has the broker set its `HttpOnly` refresh
 * cookie, so that `resumeSession` works after a reload; in a browser the cookie
 * is the browser's, never readable by scripts.
 */
export async function login(
  baseUrl: string,
  username: string,
  password: string,
  options: { fetch?: FetchLike; remember?: boolean } = {},
): Promise<TokenResponse> {
  const body: Record<string, unknown> = { username, password };
  if (options.remember) body.remember = true;
  const res = await postJson(options.fetch ?? defaultFetch(), `${normalizeBase(baseUrl)}/v1/auth/login`, body);
  return (await res.json()) as TokenResponse;
}

/**
 * `POST /v1/auth/session` (extension): trades the browser's refresh cookie for
 * a fresh access token (the broker rotates the cookie). Rejects with status 401
 * when there is no cookie or it no longer works (logged out, expired, reused).
 */
export async function resumeSession(baseUrl: string, options: { fetch?: FetchLike } = {}): Promise<TokenResponse> {
  const res = await postJson(options.fetch ?? defaultFetch(), `${normalizeBase(baseUrl)}/v1/auth/session`, undefined);
  return (await res.json()) as TokenResponse;
}

/**
 * `POST /v1/auth/logout` (extension): revokes the refresh cookie's family (or
 * the one `token` was issued under) and clears the cookie.
 */
export async function logout(baseUrl: string, token?: string, options: { fetch?: FetchLike } = {}): Promise<{ revoked: boolean }> {
  const res = await postJson(options.fetch ?? defaultFetch(), `${normalizeBase(baseUrl)}/v1/auth/logout`, undefined, token);
  return (await res.json()) as { revoked: boolean };
}

/** `POST /v1/auth/refresh` with `Authorization: Bearer <token>`; a bad token rejects with status 401. */
export async function refreshAccessToken(
  baseUrl: string,
  token: string,
  options: { fetch?: FetchLike } = {},
): Promise<TokenResponse> {
  const res = await postJson(options.fetch ?? defaultFetch(), `${normalizeBase(baseUrl)}/v1/auth/refresh`, undefined, token);
  return (await res.json()) as TokenResponse;
}

// ---------------------------------------------------------------------------
// Pure helpers: JWT, backoff
// ---------------------------------------------------------------------------

/** Decodes a JWT payload WITHOUT verifying it. Returns null when it is not a JWT. */
export function decodeJwt(token: string): { exp?: number; iat?: number; sub?: string; [claim: string]: unknown } | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
    const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/**
 * Milliseconds from `now` until the token should be refreshed: `exp` minus
 * min(60 s, 10 % of its lifetime `exp - iat`), never negative. Null without a numeric `exp`.
 */
export function refreshDelay(token: string, now: number): number | null {
  const claims = decodeJwt(token);
  if (!claims || typeof claims.exp !== "number") return null;
  const expMs = claims.exp * 1000;
  const lifetime = typeof claims.iat === "number" ? expMs - claims.iat * 1000 : expMs - now;
  const margin = Math.min(60_000, Math.max(0, lifetime) * 0.1);
  return Math.max(0, expMs - margin - now);
}

function expiresWithin(token: string, ms: number, now: number): boolean {
  const exp = decodeJwt(token)?.exp;
  return typeof exp === "number" && exp * 1000 - now <= ms;
}

export interface ReconnectOptions {
  /** Delay before the first reconnect attempt. Default 1000. */
  initialDelayMs?: number;
  /** Cap of the delay, jitter included. Default 30000. */
  maxDelayMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /** Relative jitter: the delay is scaled by a uniform factor in [1-jitter, 1+jitter]. Default 0.2. */
  jitter?: number;
  /** Consecutive failed attempts before giving up (state `disconnected`). Default Infinity. */
  maxAttempts?: number;
}

/** Delay before reconnect attempt `attempt` (1-based): 1, 2, 4, 8, 16, 30, 30 ... s, each ±20 %, never above the cap. */
export function backoffDelay(attempt: number, options: ReconnectOptions = {}, random: () => number = Math.random): number {
  const initial = options.initialDelayMs ?? 1000;
  const max = options.maxDelayMs ?? 30_000;
  const jitter = options.jitter ?? 0.2;
  const base = Math.min(max, initial * (options.factor ?? 2) ** Math.max(0, attempt - 1));
  const scaled = base * (1 - jitter + 2 * jitter * random());
  return Math.round(Math.min(max, Math.max(0, scaled)));
}

// ---------------------------------------------------------------------------
// SequenceTracker: dedupe, reorder, resync
// ---------------------------------------------------------------------------

export type Delivery = { kind: "event"; event: EventEnvelope } | { kind: "resync"; oldestAvailable: number };

/**
 * Turns events arriving in any order, with duplicates, into deliveries strictly in
 * sequence order, each exactly once. Pure: no I/O, no timers.
 *
 * `position` is the last sequence number delivered (contiguously); it is the resume
 * point and the value to acknowledge. The broker's `resync_required` marker is not an
 * event (it has no sequence number, contract §5): {@link SequenceTracker.resync} takes
 * its `oldest_available` S. When S > position + 1 (or the position is unknown) the
 * events before S are gone: it delivers a resync and moves the position to S - 1, so
 * S, S+1, ... are delivered next. A marker that announces no gap is ignored.
 */
export class SequenceTracker {
  private last: number | null;
  private readonly buffer = new Map<number, EventEnvelope>();

  /** `position`: last sequence number already handled, or null for "unknown, start at the first event seen". */
  constructor(position: number | null = null) {
    this.last = position;
  }

  get position(): number | null {
    return this.last;
  }

  /** Number of events waiting for a gap to be filled. */
  get buffered(): number {
    return this.buffer.size;
  }

  /** Sets the position if it is still unknown (e.g. from `welcome.acked`). */
  init(position: number): void {
    if (this.last === null) this.last = position;
  }

  /** A `resync_required` marker with `oldest_available` = `oldest`. */
  resync(oldest: number): Delivery[] {
    if (!Number.isSafeInteger(oldest) || oldest < 1) return [];
    if (this.last !== null && oldest <= this.last + 1) return [];
    this.last = oldest - 1;
    for (const k of this.buffer.keys()) if (k <= this.last) this.buffer.delete(k);
    const out: Delivery[] = [{ kind: "resync", oldestAvailable: oldest }];
    this.drain(out);
    return out;
  }

  push(ev: EventEnvelope): Delivery[] {
    const seq = ev.sequence_number;
    if (!Number.isSafeInteger(seq) || seq < 1) return [];
    if (this.last === null) this.last = seq - 1;
    const out: Delivery[] = [];
    if (seq <= this.last || this.buffer.has(seq)) return out;
    this.buffer.set(seq, ev);
    this.drain(out);
    return out;
  }

  private drain(out: Delivery[]): void {
    for (;;) {
      const next = (this.last as number) + 1;
      const ev = this.buffer.get(next);
      if (!ev) return;
      this.buffer.delete(next);
      this.last = next;
      out.push({ kind: "event", event: ev });
    }
  }
}

// ---------------------------------------------------------------------------
// text/event-stream parser
// ---------------------------------------------------------------------------

export interface SseMessage {
  id?: string;
  event: string;
  data: string;
}

/** Incremental parser for `text/event-stream` (HTML spec rules; `retry:` is ignored). */
export class SseParser {
  private rest = "";
  private data: string[] = [];
  private event = "";
  private id: string | undefined;

  push(chunk: string): SseMessage[] {
    const text = this.rest + chunk;
    const out: SseMessage[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const ch = text[i];
      if (ch !== "\n" && ch !== "\r") continue;
      if (ch === "\r" && i + 1 === text.length) break; // may be the first half of \r\n
      this.line(text.slice(start, i), out);
      if (ch === "\r" && text[i + 1] === "\n") i++;
      start = i + 1;
    }
    this.rest = text.slice(start);
    return out;
  }

  private line(line: string, out: SseMessage[]): void {
    if (line === "") {
      if (this.data.length > 0) out.push({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
      this.data = [];
      this.event = "";
      return;
    }
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}

// ---------------------------------------------------------------------------
// MythosClient
// ---------------------------------------------------------------------------

export interface MythosClientOptions {
  /** `http(s)://host:port` of the broker; relative to `location` in browsers. */
  baseUrl: string;
  /** Access token (JWT) of the player. */
  token: string;
  /** Where events come from. Default "ws". Commands always use a WebSocket. */
  transport?: Transport;
  /** With transport "sse": also open a WebSocket for commands. Default true. */
  commandSocket?: boolean;
  /** Last sequence number the app already has; default: unknown (the broker resumes from the acked cursor). */
  since?: number;
  reconnect?: ReconnectOptions;
  /** Acknowledge after this many delivered events. Default 50. */
  ackEvery?: number;
  /** ...or this many ms after the first unacknowledged delivery. Default 1000. */
  ackIntervalMs?: number;
  /** Refresh the token before it expires. Default true. */
  autoRefresh?: boolean;
  /** Replaces `POST /v1/auth/refresh` (e.g. to log in again). Resolves with the new token. */
  tokenRefresher?: (oldToken: string) => Promise<string>;
  /** Send `{"type":"ping"}` this often. Default 25000. */
  pingIntervalMs?: number;
  /** Reconnect when a channel is silent this long (checked at each ping tick); 0 disables. Default 60000. */
  idleTimeoutMs?: number;
  /** Most commands waiting for acceptance (queued or in flight). Default 1000. */
  maxPendingCommands?: number;
  WebSocket?: WebSocketCtor;
  fetch?: FetchLike;
  clock?: Clock;
  random?: () => number;
}

export interface MythosClientEvents {
  state: [state: ConnectionState, previous: ConnectionState];
  event: [event: EventEnvelope];
  resync: [info: ResyncInfo];
  error: [error: MythosError];
  token: [token: string];
  welcome: [welcome: Welcome];
}

type Frame = { type: "command"; id: string; command: string; args: string[] } | { type: "chat"; id: string; channel: string; message: string };

interface PendingCommand {
  frame: Frame;
  resolve: (id: string) => void;
  reject: (err: MythosError) => void;
}

/** One connection attempt: a WebSocket and/or an SSE stream, opened and torn down together. */
interface Conn {
  token: string;
  ws?: WebSocketLike;
  wsReady: boolean;
  sse?: AbortController;
  sseReady: boolean;
  seenWs: number;
  seenSse: number;
  heartbeat?: unknown;
}

export class MythosClient {
  private readonly base: string;
  private readonly transport: Transport;
  private readonly useWs: boolean;
  private readonly o: {
    reconnect: ReconnectOptions;
    maxAttempts: number;
    ackEvery: number;
    ackIntervalMs: number;
    autoRefresh: boolean;
    pingIntervalMs: number;
    idleTimeoutMs: number;
    maxPendingCommands: number;
  };
  private readonly WS?: WebSocketCtor;
  private readonly fetch: FetchLike;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly refresher: (oldToken: string) => Promise<string>;
  private readonly listeners = new Map<keyof MythosClientEvents, Set<(...args: any[]) => void>>();
  private readonly tracker: SequenceTracker;
  private readonly pending = new Map<string, PendingCommand>();
  private readonly idPrefix: string;

  private _token: string;
  private _state: ConnectionState = "disconnected";
  private conn: Conn | null = null;
  private running = false;
  private closed = false;
  private attempt = 0;
  private needRefresh = false;
  private refreshing: Promise<string> | null = null;
  private counter = 0;
  private unacked = 0;
  private lastAcked = 0;
  private reconnectTimer?: unknown;
  private refreshTimer?: unknown;
  private ackTimer?: unknown;

  constructor(options: MythosClientOptions) {
    this.base = normalizeBase(options.baseUrl);
    this._token = options.token;
    this.transport = options.transport ?? "ws";
    this.useWs = this.transport === "ws" || options.commandSocket !== false;
    this.o = {
      reconnect: options.reconnect ?? {},
      maxAttempts: options.reconnect?.maxAttempts ?? Infinity,
      ackEvery: options.ackEvery ?? 50,
      ackIntervalMs: options.ackIntervalMs ?? 1000,
      autoRefresh: options.autoRefresh ?? true,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 60_000,
      maxPendingCommands: options.maxPendingCommands ?? 1000,
    };
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    this.fetch = options.fetch ?? defaultFetch();
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.refresher =
      options.tokenRefresher ?? ((old) => refreshAccessToken(this.base, old, { fetch: this.fetch }).then((r) => r.access_token));
    this.tracker = new SequenceTracker(options.since ?? null);
    this.lastAcked = options.since ?? 0;
    this.idPrefix = Math.floor(this.random() * 36 ** 6).toString(36);
  }

  get state(): ConnectionState {
    return this._state;
  }

  get token(): string {
    return this._token;
  }

  /** Last sequence number delivered to the app (contiguously), or null before the first. */
  get lastSequenceNumber(): number | null {
    return this.tracker.position;
  }

  /** Commands and chat messages not yet accepted by the broker (queued or in flight). */
  get pendingCommands(): number {
    return this.pending.size;
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof MythosClientEvents>(name: K, fn: (...args: MythosClientEvents[K]) => void): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(fn as (...args: any[]) => void);
    return () => void set!.delete(fn as (...args: any[]) => void);
  }

  /** Opens the connection (no-op unless disconnected). Reconnects on its own until `close()`. */
  connect(): void {
    if (this._state !== "disconnected") return;
    if (!this.useWs || this.WS) {
      this.running = true;
      this.closed = false;
      this.attempt = 0;
      this.setState("connecting");
      this.scheduleRefresh();
      void this.open();
    } else {
      this.emit("error", new MythosError("no_websocket", "no global WebSocket: pass options.WebSocket (e.g. from the ws package)"));
    }
  }

  /** Sends the pending acknowledgement, closes everything, rejects pending commands; no reconnect. */
  close(): void {
    this.flushAck();
    this.closed = true;
    this.halt();
    for (const p of this.pending.values()) p.reject(new MythosError("closed", "the client was closed", { id: p.frame.id }));
    this.pending.clear();
  }

  /** Replaces the token (e.g. after a new login); used from the next connection attempt on. */
  setToken(token: string): void {
    this._token = token;
    this.needRefresh = false;
    this.scheduleRefresh();
  }

  /** Refreshes the token now (single flight); emits `token`. */
  refreshToken(): Promise<string> {
    if (!this.refreshing) {
      const p = this.refresher(this._token).then(
        (token) => {
          this.refreshing = null;
          this.setToken(token);
          this.emit("token", token);
          return token;
        },
        (err) => {
          this.refreshing = null;
          throw err instanceof MythosError ? err : new MythosError("refresh_failed", String((err as Error)?.message ?? err));
        },
      );
      this.refreshing = p;
    }
    return this.refreshing;
  }

  /** Sends `{"type":"command"}`; resolves with its id on `command_accepted`, rejects on an `error` frame with that id. */
  sendCommand(command: string, args: string[] = []): Promise<string> {
    return this.submit({ type: "command", id: this.nextId(), command, args });
  }

  /** Sends `{"type":"chat"}`; settles like `sendCommand`. */
  say(channel: string, message: string): Promise<string> {
    return this.submit({ type: "chat", id: this.nextId(), channel, message });
  }

  /** Acknowledges everything delivered so far now, instead of waiting for the batch. */
  flushAck(): void {
    this.clearTimer("ackTimer");
    const n = this.tracker.position;
    if (n === null || n <= this.lastAcked) {
      this.unacked = 0;
      return;
    }
    if (this.transport === "ws") {
      if (!this.conn?.wsReady || !this.sendFrame(this.conn, { type: "ack", sequence_number: n })) return; // resent on reconnect
    } else {
      const previous = this.lastAcked;
      postJson(this.fetch, `${this.base}/v1/ack`, { sequence_number: n }, this._token).catch((err: MythosError) => {
        if (this.lastAcked === n) this.lastAcked = previous;
        this.emit("error", err);
      });
    }
    this.lastAcked = n;
    this.unacked = 0;
  }

  // -- connection lifecycle -------------------------------------------------

  private async open(): Promise<void> {
    try {
      if (this.needRefresh || expiresWithin(this._token, 5000, this.clock.now())) await this.refreshToken();
    } catch (e) {
      if (!this.running || this.conn) return;
      const err = e as MythosError;
      this.emit("error", err);
      if (err.status === 401 || err.status === 403) this.halt(); // the app must log in again
      else this.scheduleReconnect(false);
      return;
    }
    if (!this.running || this.conn || this.reconnectTimer !== undefined) return;
    const now = this.clock.now();
    const c: Conn = { token: this._token, wsReady: false, sseReady: false, seenWs: now, seenSse: now };
    this.conn = c;
    if (this.useWs) this.openWs(c);
    if (this.transport === "sse") void this.openSse(c);
    this.armHeartbeat(c);
  }

  private openWs(c: Conn): void {
    const events = this.transport === "ws";
    // The command socket of the SSE transport asks for no replay: its events are ignored.
    const since = events ? this.tracker.position : Number.MAX_SAFE_INTEGER;
    const query = `token=${encodeURIComponent(c.token)}${since === null ? "" : `&since=${since}`}`;
    let ws: WebSocketLike;
    try {
      ws = new this.WS!(`${this.base.replace(/^http/i, "ws")}/v1/ws?${query}`);
    } catch (e) {
      this.emit("error", new MythosError("network_error", String((e as Error)?.message ?? e)));
      this.clock.setTimeout(() => this.drop(c, 1006, "WebSocket constructor failed"), 0);
      return;
    }
    c.ws = ws;
    ws.onopen = noop;
    ws.onerror = noop; // a close event follows
    ws.onclose = (ev: { code?: number; reason?: string }) => this.drop(c, ev?.code ?? 1006, ev?.reason ?? "");
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.conn !== c) return;
      c.seenWs = this.clock.now();
      this.onFrame(c, ev.data, events);
    };
  }

  private async openSse(c: Conn): Promise<void> {
    const abort = new AbortController();
    c.sse = abort;
    const pos = this.tracker.position;
    const headers: Record<string, string> = { Accept: "text/event-stream", Authorization: `Bearer ${c.token}` };
    let url = `${this.base}/v1/events`;
    if (pos !== null) {
      headers["Last-Event-ID"] = String(pos);
      url += `?last_event_id=${pos}`;
    }
    let reader: ReadableStreamDefaultReader<Uint8Array>;
    try {
      const res = await this.fetch(url, { headers, signal: abort.signal });
      if (this.conn !== c) return;
      if (!res.ok || !res.body) {
        const err = res.ok ? new MythosError("protocol_error", "event stream without a body") : await errorFromResponse(res);
        if (this.conn !== c) return;
        if (res.status !== 401) this.emit("error", err);
        this.drop(c, res.status === 401 ? 4001 : 1006, err.message);
        return;
      }
      reader = res.body.getReader();
      if (pos !== null && pos > this.lastAcked) this.lastAcked = pos; // Last-Event-ID acknowledged it
    } catch (e) {
      this.drop(c, 1006, String((e as Error)?.message ?? e));
      return;
    }
    c.sseReady = true;
    this.checkConnected(c);
    const decoder = new TextDecoder();
    const parser = new SseParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this.conn !== c) break;
        if (done) break;
        c.seenSse = this.clock.now();
        for (const m of parser.push(decoder.decode(value, { stream: true }))) {
          if (this.conn !== c) break;
          this.onSseMessage(m);
        }
      }
    } catch {
      /* aborted or network failure */
    }
    if (this.conn === c) this.drop(c, 1006, "event stream ended");
    else reader.cancel().catch(noop);
  }

  private checkConnected(c: Conn): void {
    if (this.conn !== c || (this.useWs && !c.wsReady) || (this.transport === "sse" && !c.sseReady)) return;
    this.attempt = 0;
    this.setState("connected");
    this.flushAck();
  }

  /** A channel of `c` ended: tear everything down and schedule a reconnect. */
  private drop(c: Conn, code: number, reason: string): void {
    if (this.conn !== c || !this.running) return;
    this.teardown();
    if (code === 4001 && c.token === this._token) this.needRefresh = true;
    if (code === 1008) this.emit("error", new MythosError("policy_violation", reason || "closed by the broker (1008)", { closeCode: code }));
    if (code === 1009) this.emit("error", new MythosError("too_large", reason || "closed by the broker (1009)", { closeCode: code }));
    const tokenExpired = code === 4001 || expiresWithin(c.token, 0, this.clock.now());
    this.scheduleReconnect(tokenExpired);
  }

  private scheduleReconnect(immediate: boolean): void {
    if (!this.running) return;
    this.setState("reconnecting");
    this.attempt++;
    if (this.attempt > this.o.maxAttempts) {
      this.emit("error", new MythosError("max_attempts", `gave up after ${this.o.maxAttempts} reconnect attempts`));
      this.halt();
      return;
    }
    const delay = immediate && this.attempt === 1 ? 0 : backoffDelay(this.attempt, this.o.reconnect, this.random);
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delay);
  }

  private teardown(reason = "client reconnecting"): void {
    const c = this.conn;
    if (!c) return;
    this.conn = null;
    if (c.heartbeat !== undefined) this.clock.clearTimeout(c.heartbeat);
    c.sse?.abort();
    if (c.ws) {
      c.ws.onclose = c.ws.onmessage = c.ws.onopen = noop;
      try {
        c.ws.close(1000, reason);
      } catch {
        /* already closed */
      }
    }
  }

  /** Stops without rejecting pending commands (they are sent after the next `connect()`). */
  private halt(): void {
    this.running = false;
    this.teardown("client closed");
    this.clearTimer("reconnectTimer");
    this.clearTimer("refreshTimer");
    this.clearTimer("ackTimer");
    this.setState("disconnected");
  }

  private armHeartbeat(c: Conn): void {
    c.heartbeat = this.clock.setTimeout(() => {
      if (this.conn !== c) return;
      const now = this.clock.now();
      const idle = this.o.idleTimeoutMs;
      if (idle > 0 && ((c.ws && now - c.seenWs > idle) || (c.sse && now - c.seenSse > idle))) {
        this.drop(c, 4000, "idle timeout");
        return;
      }
      if (c.wsReady) this.sendFrame(c, { type: "ping" });
      this.armHeartbeat(c);
    }, this.o.pingIntervalMs);
  }

  private scheduleRefresh(): void {
    this.clearTimer("refreshTimer");
    if (!this.o.autoRefresh || !this.running) return;
    const delay = refreshDelay(this._token, this.clock.now());
    if (delay === null) return;
    this.refreshTimer = this.clock.setTimeout(() => {
      this.refreshTimer = undefined;
      const left = refreshDelay(this._token, this.clock.now());
      if (left !== null && left > 1000) return this.scheduleRefresh(); // the timer was capped
      this.refreshToken().catch((err: MythosError) => {
        this.emit("error", err);
        // Retry while the token is still valid; past that, reconnects refresh or halt.
        if (this.running && err.status !== 401 && !expiresWithin(this._token, 10_000, this.clock.now()))
          this.refreshTimer = this.clock.setTimeout(() => this.scheduleRefresh(), 10_000);
      });
    }, Math.min(delay, MAX_TIMER_MS));
  }

  // -- frames and events ----------------------------------------------------

  private onFrame(c: Conn, data: unknown, events: boolean): void {
    let msg: any;
    try {
      msg = JSON.parse(String(data));
    } catch {
      this.emit("error", new MythosError("protocol_error", "frame is not JSON"));
      return;
    }
    switch (msg?.type) {
      case "welcome": {
        const { type: _t, ...welcome } = msg;
        c.wsReady = true;
        if (events && typeof welcome.acked === "number") this.tracker.init(welcome.acked);
        this.emit("welcome", welcome as Welcome);
        if (this.conn !== c) return;
        for (const p of this.pending.values()) this.sendFrame(c, p.frame); // queued and unconfirmed, same ids
        this.checkConnected(c);
        return;
      }
      case "event":
        if (events) {
          const { type: _t, ...envelope } = msg;
          this.deliver(this.tracker.push(envelope as EventEnvelope));
        }
        return;
      case "resync_required":
        if (events) this.deliver(this.tracker.resync(Number(msg.oldest_available)));
        return;
      case "command_accepted": {
        const p = this.pending.get(msg.id);
        if (p) {
          this.pending.delete(msg.id);
          p.resolve(msg.id);
        }
        return;
      }
      case "error": {
        const err = new MythosError(String(msg.code ?? "error"), String(msg.message ?? ""), {
          id: typeof msg.id === "string" ? msg.id : undefined,
          retryAfterMs: typeof msg.retry_after_ms === "number" ? msg.retry_after_ms : undefined,
        });
        const p = err.id === undefined ? undefined : this.pending.get(err.id);
        if (p) {
          this.pending.delete(err.id!);
          p.reject(err);
        } else this.emit("error", err);
        return;
      }
      default:
        return; // pong and future frame types
    }
  }

  private onSseMessage(m: SseMessage): void {
    let env: any;
    try {
      env = JSON.parse(m.data);
    } catch {
      this.emit("error", new MythosError("protocol_error", "SSE data is not JSON"));
      return;
    }
    if (!env || typeof env !== "object") return;
    // The marker has no id: line (an SSE parser keeps the previous id).
    if (m.event === "resync_required") return this.deliver(this.tracker.resync(Number(env.oldest_available)));
    if (typeof env.sequence_number !== "number" && m.id !== undefined) env.sequence_number = Number(m.id);
    if (typeof env.event_type !== "string") env.event_type = m.event;
    this.deliver(this.tracker.push(env as EventEnvelope));
  }

  private deliver(ds: Delivery[]): void {
    for (const d of ds) {
      if (d.kind === "resync") this.emit("resync", { oldestAvailable: d.oldestAvailable });
      else this.emit("event", d.event);
      this.unacked++;
    }
    if (this.unacked >= this.o.ackEvery) this.flushAck();
    else if (this.unacked > 0 && this.ackTimer === undefined)
      this.ackTimer = this.clock.setTimeout(() => {
        this.ackTimer = undefined;
        this.flushAck();
      }, this.o.ackIntervalMs);
  }

  // -- commands -------------------------------------------------------------

  private nextId(): string {
    return `c-${this.idPrefix}-${++this.counter}`;
  }

  private submit(frame: Frame): Promise<string> {
    if (this.closed) return Promise.reject(new MythosError("closed", "the client was closed", { id: frame.id }));
    if (!this.useWs) return Promise.reject(new MythosError("no_command_channel", "commandSocket is false", { id: frame.id }));
    if (this.pending.size >= this.o.maxPendingCommands)
      return Promise.reject(new MythosError("queue_full", "too many pending commands", { id: frame.id }));
    return new Promise<string>((resolve, reject) => {
      this.pending.set(frame.id, { frame, resolve, reject });
      if (this.conn?.wsReady) this.sendFrame(this.conn, frame); // else sent after the next welcome
    });
  }

  private sendFrame(c: Conn, frame: object): boolean {
    if (!c.ws || c.ws.readyState !== WS_OPEN) return false;
    try {
      c.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // -- plumbing -------------------------------------------------------------

  private setState(next: ConnectionState): void {
    const prev = this._state;
    if (prev === next) return;
    this._state = next;
    this.emit("state", next, prev);
  }

  private emit<K extends keyof MythosClientEvents>(name: K, ...args: MythosClientEvents[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        queueMicrotask(() => {
          throw e; // like EventTarget: report, do not break the client
        });
      }
    }
  }

  private clearTimer(name: "reconnectTimer" | "refreshTimer" | "ackTimer"): void {
    if (this[name] !== undefined) this.clock.clearTimeout(this[name]);
    this[name] = undefined;
  }
}

import { test } from "node:test";
import assert from "node:assert/strict";
import { MythosClient, MythosError, type ConnectionState, type MythosClientOptions } from "../client.js";
import {
  FakeClock,
  FakeWebSocket,
  fakeFetch,
  flush,
  jsonResponse,
  sseEvent,
  sseStream,
  tokenAt,
  type Call,
} from "../test-support/helpers.js";
import type { ResponseLike } from "../client.js";

type Handler = (call: Call) => ResponseLike | Promise<ResponseLike>;

function setup(options: Partial<MythosClientOptions> = {}, handler?: Handler) {
  FakeWebSocket.reset();
  const clock = new FakeClock();
  let issued = 0;
  const fetch = fakeFetch(
    handler ??
      ((call) => {
        if (call.path === "/v1/auth/refresh")
          return jsonResponse(200, {
            access_token: tokenAt(clock.now() + ++issued, 3600), // distinct per refresh
            token_type: "Bearer",
            expires_in: 3600,
            player_id: "alice",
          });
        return jsonResponse(200, {});
      }),
  );
  const client = new MythosClient({
    baseUrl: "http://broker:54731",
    token: tokenAt(clock.now()),
    WebSocket: FakeWebSocket,
    fetch,
    clock,
    random: () => 0.5, // no jitter
    ...options,
  });
  const log = {
    states: [] as ConnectionState[],
    events: [] as number[],
    resyncs: [] as number[],
    errors: [] as MythosError[],
    tokens: [] as string[],
  };
  client.on("state", (s) => log.states.push(s));
  client.on("event", (e) => log.events.push(e.sequence_number));
  client.on("resync", (r) => log.resyncs.push(r.oldestAvailable));
  client.on("error", (e) => log.errors.push(e));
  client.on("token", (t) => log.tokens.push(t));
  return { client, clock, fetch, log };
}

const sockets = () => FakeWebSocket.instances.length;
const ws = () => FakeWebSocket.last();
const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("state transitions: connecting, connected, reconnecting, connected, disconnected", async () => {
  const { client, clock, log } = setup();
  assert.equal(client.state, "disconnected");
  client.connect();
  await flush();
  assert.equal(client.state, "connecting");
  assert.equal(ws().url.startsWith("ws://broker:54731/v1/ws?"), true);
  assert.equal(ws().params.get("token"), client.token);
  assert.equal(ws().params.has("since"), false); // unknown position: the broker uses the acked cursor
  ws().open();
  assert.equal(client.state, "connecting"); // connected only once welcomed
  ws().accept({ acked: 7 });
  assert.equal(client.state, "connected");
  ws().event(8);
  ws().serverClose(1012, "restart");
  assert.equal(client.state, "reconnecting");
  await clock.advance(1000);
  assert.equal(sockets(), 2);
  assert.equal(ws().params.get("since"), "8");
  ws().accept();
  client.close();
  assert.equal(ws().closedWith, 1000);
  await clock.advance(120_000);
  assert.equal(sockets(), 2);
  assert.deepEqual(log.states, ["connecting", "connected", "reconnecting", "connected", "disconnected"]);
});

test("reconnect backoff: 1, 2, 4, 8, 16, 30, 30 s; reset after a successful connect", async () => {
  const { client, clock } = setup();
  client.connect();
  await flush();
  ws().accept();
  ws().serverClose(1006);
  for (const delay of [1000, 2000, 4000, 8000, 16000, 30000, 30000]) {
    const before = sockets();
    await clock.advance(delay - 1);
    assert.equal(sockets(), before, `no attempt before ${delay} ms`);
    await clock.advance(1);
    assert.equal(sockets(), before + 1, `attempt after ${delay} ms`);
    ws().serverClose(1006); // the attempt fails
  }
  await clock.advance(30000);
  ws().accept();
  assert.equal(client.state, "connected");
  ws().serverClose(4008, "slow_consumer");
  const before = sockets();
  await clock.advance(1000);
  assert.equal(sockets(), before + 1); // back to 1 s
  client.close();
});

test("reconnect jitter stays within ±20 %", async () => {
  for (const [r, expected] of [
    [0, 800],
    [0.999999, 1200],
  ] as const) {
    const { client, clock } = setup({ random: () => r });
    client.connect();
    await flush();
    ws().accept();
    ws().serverClose(1006);
    await clock.advance(expected - 1);
    assert.equal(sockets(), 1);
    await clock.advance(1);
    assert.equal(sockets(), 2);
    client.close();
  }
});

test("maxAttempts: gives up after that many failed attempts", async () => {
  const { client, clock, log } = setup({ reconnect: { maxAttempts: 3 } });
  client.connect();
  await flush();
  ws().serverClose(1006); // initial connect fails
  for (const delay of [1000, 2000, 4000]) {
    await clock.advance(delay);
    ws().serverClose(1006);
  }
  assert.equal(sockets(), 4);
  assert.equal(client.state, "disconnected");
  assert.deepEqual(log.errors.map((e) => e.code), ["max_attempts"]);
  await clock.advance(300_000);
  assert.equal(sockets(), 4);
});

test("events are deduplicated, reordered and resumed from the last delivered sequence number", async () => {
  const { client, clock, log } = setup({ since: 10 });
  client.connect();
  await flush();
  assert.equal(ws().params.get("since"), "10");
  ws().accept({ acked: 3 }); // a known position is not overridden by welcome.acked
  for (const n of [11, 13, 12, 12, 10, 15]) ws().event(n);
  assert.deepEqual(log.events, [11, 12, 13]);
  assert.equal(client.lastSequenceNumber, 13);
  ws().serverClose(1006);
  await clock.advance(1000);
  assert.equal(ws().params.get("since"), "13");
  ws().accept();
  for (const n of [14, 15, 16]) ws().event(n); // 15 was buffered and arrives again
  assert.deepEqual(log.events, [11, 12, 13, 14, 15, 16]);
  client.close();
});

test("resync_required is surfaced once, then S..L are delivered in order and live continues after it", async () => {
  const { client, log } = setup({ since: 5, ackEvery: 1000 });
  client.connect();
  await flush();
  ws().accept({ last_sequence_number: 200, acked: 5 });
  ws().frame({ type: "resync_required", oldest_available: 100 });
  assert.deepEqual(log.resyncs, [100]);
  assert.deepEqual(log.events, []);
  assert.equal(client.lastSequenceNumber, 99);
  for (const n of range(100, 200)) ws().event(n);
  ws().event(201);
  assert.deepEqual(log.events, [...range(100, 201)]);
  assert.equal(client.lastSequenceNumber, 201);
  client.flushAck();
  assert.deepEqual(ws().sentOf("ack"), [{ type: "ack", sequence_number: 201 }]);
  client.close();
});

test("acks are batched by count (default 50)", async () => {
  const { client, clock } = setup({ since: 0 });
  client.connect();
  await flush();
  ws().accept();
  for (const n of range(1, 120)) ws().event(n);
  assert.deepEqual(ws().sentOf("ack").map((a) => a.sequence_number), [50, 100]);
  await clock.advance(999);
  assert.equal(ws().sentOf("ack").length, 2);
  await clock.advance(1);
  assert.deepEqual(ws().sentOf("ack").map((a) => a.sequence_number), [50, 100, 120]);
  await clock.advance(10_000);
  assert.equal(ws().sentOf("ack").length, 3); // nothing new, nothing sent
  client.close();
});

test("acks are batched by time (default 1000 ms after the first unacknowledged event)", async () => {
  const { client, clock } = setup({ since: 0, ackEvery: 5, ackIntervalMs: 1000 });
  client.connect();
  await flush();
  ws().accept();
  ws().event(1);
  await clock.advance(600);
  ws().event(2);
  await clock.advance(399);
  assert.equal(ws().sentOf("ack").length, 0);
  await clock.advance(1);
  assert.deepEqual(ws().sentOf("ack"), [{ type: "ack", sequence_number: 2 }]);
  for (const n of range(3, 7)) ws().event(n); // 5 more: count wins
  assert.deepEqual(ws().sentOf("ack").map((a) => a.sequence_number), [2, 7]);
  client.close();
});

test("an ack due while disconnected is sent after the next welcome", async () => {
  const { client, clock } = setup({ since: 0, ackIntervalMs: 1000 });
  client.connect();
  await flush();
  ws().accept();
  ws().event(1);
  ws().event(2);
  ws().serverClose(1006);
  await clock.advance(1000); // ack timer fires while down; reconnect happens
  assert.equal(ws().sentOf("ack").length, 0);
  ws().accept();
  assert.deepEqual(ws().sentOf("ack"), [{ type: "ack", sequence_number: 2 }]);
  client.close();
});

test("offline queue: commands typed while disconnected are sent once after connecting, with their ids", async () => {
  const { client, clock } = setup();
  const look = client.sendCommand("look", ["north"]);
  const chat = client.say("say", "hello");
  assert.equal(client.pendingCommands, 2);
  client.connect();
  await flush();
  ws().open();
  assert.equal(ws().sent.length, 0); // nothing before the welcome
  ws().accept();
  const sent = ws().sent.filter((f) => f.type !== "ping");
  assert.equal(sent.length, 2);
  assert.deepEqual({ ...sent[0], id: undefined }, { type: "command", id: undefined, command: "look", args: ["north"] });
  assert.deepEqual({ ...sent[1], id: undefined }, { type: "chat", id: undefined, channel: "say", message: "hello" });
  assert.notEqual(sent[0].id, sent[1].id);
  ws().frame({ type: "command_accepted", id: sent[1].id });
  ws().frame({ type: "command_accepted", id: sent[0].id });
  assert.equal(await look, sent[0].id);
  assert.equal(await chat, sent[1].id);
  assert.equal(client.pendingCommands, 0);
  await clock.advance(0);
  client.close();
});

test("unconfirmed commands are resent after a reconnect with the same id, confirmed ones never", async () => {
  const { client, clock } = setup();
  client.connect();
  await flush();
  ws().accept();
  const a = client.sendCommand("look");
  const b = client.sendCommand("inventory");
  const [fa, fb] = ws().sentOf("command");
  ws().frame({ type: "command_accepted", id: fb.id }); // b confirmed, a not
  ws().serverClose(1006);
  const c = client.say("say", "typed while offline");
  await clock.advance(1000);
  ws().accept();
  const resent = ws().sent.filter((f) => f.type !== "ping");
  assert.deepEqual(resent.map((f) => f.id), [fa.id, resent[1].id]);
  assert.deepEqual(resent[0], fa); // identical frame, same id
  assert.equal(resent[1].type, "chat");
  ws().frame({ type: "command_accepted", id: fa.id });
  ws().frame({ type: "command_accepted", id: resent[1].id });
  assert.deepEqual(await Promise.all([a, b, c]), [fa.id, fb.id, resent[1].id]);
  ws().serverClose(1012);
  await clock.advance(1000);
  ws().accept();
  assert.deepEqual(ws().sent.filter((f) => f.type !== "ping"), []); // nothing left to resend
  client.close();
});

test("error frames reject the command with that id; others go to on('error')", async () => {
  const { client, log } = setup();
  client.connect();
  await flush();
  ws().accept();
  const p = client.sendCommand("dance");
  const id = ws().sentOf("command")[0].id;
  ws().frame({ type: "error", code: "rate_limited", message: "slow down", id, retry_after_ms: 250 });
  await assert.rejects(p, (e: unknown) => e instanceof MythosError && e.code === "rate_limited" && e.id === id && e.retryAfterMs === 250);
  ws().frame({ type: "error", code: "invalid_message", message: "unknown type" });
  assert.deepEqual(log.errors.map((e) => e.code), ["invalid_message"]);
  assert.equal(client.pendingCommands, 0);
  client.close();
});

test("close() rejects pending commands; commands after close() are rejected", async () => {
  const { client } = setup();
  client.connect();
  await flush();
  const p = client.sendCommand("look");
  client.close();
  await assert.rejects(p, { code: "closed" });
  await assert.rejects(client.say("say", "hi"), { code: "closed" });
});

test("token refresh is scheduled 60 s before exp and emits on('token')", async () => {
  const { client, clock, fetch, log } = setup();
  const first = client.token;
  client.connect();
  await flush();
  ws().accept();
  const refreshes = () => fetch.calls.filter((c) => c.path === "/v1/auth/refresh");
  await clock.advance(3540_000 - 1);
  assert.equal(refreshes().length, 0);
  await clock.advance(1);
  assert.equal(refreshes().length, 1);
  assert.equal(refreshes()[0]!.init.headers!.Authorization, `Bearer ${first}`);
  assert.equal(log.tokens.length, 1);
  assert.equal(client.token, log.tokens[0]);
  assert.equal(client.state, "connected"); // the open connection is kept
  await clock.advance(3540_000);
  assert.equal(refreshes().length, 2); // the new token is refreshed in turn
  assert.equal(refreshes()[1]!.init.headers!.Authorization, `Bearer ${log.tokens[0]}`);
  client.close();
});

test("close 4001 token_expired: refresh first, then reconnect at once with the new token, resuming", async () => {
  const { client, clock, fetch, log } = setup({ since: 0, autoRefresh: false });
  const old = client.token;
  client.connect();
  await flush();
  ws().accept();
  ws().event(1);
  ws().serverClose(4001, "token_expired");
  assert.equal(client.state, "reconnecting");
  await clock.advance(0); // no backoff delay for an expired token
  const refresh = fetch.calls.filter((c) => c.path === "/v1/auth/refresh");
  assert.equal(refresh.length, 1);
  assert.equal(refresh[0]!.init.headers!.Authorization, `Bearer ${old}`);
  assert.equal(log.tokens.length, 1);
  assert.equal(sockets(), 2);
  assert.equal(ws().params.get("token"), log.tokens[0]);
  assert.equal(ws().params.get("since"), "1");
  ws().accept();
  assert.equal(client.state, "connected");
  client.close();
});

test("close 4001 after a proactive refresh reconnects with the new token without refreshing again", async () => {
  const { client, clock, fetch, log } = setup();
  client.connect();
  await flush();
  ws().accept();
  await clock.advance(3540_000); // proactive refresh
  assert.equal(log.tokens.length, 1);
  await clock.advance(60_000);
  ws().serverClose(4001, "token_expired"); // the broker closes at the old token's exp
  await clock.advance(0);
  assert.equal(fetch.calls.filter((c) => c.path === "/v1/auth/refresh").length, 1);
  assert.equal(ws().params.get("token"), log.tokens[0]);
  client.close();
});

test("close 4001 when the refresh is refused: error, disconnected, no reconnect", async () => {
  const { client, clock, log } = setup({ autoRefresh: false }, (call) =>
    call.path === "/v1/auth/refresh"
      ? jsonResponse(401, { error: { code: "unauthorized", message: "token expired" } })
      : jsonResponse(200, {}),
  );
  client.connect();
  await flush();
  ws().accept();
  ws().serverClose(4001, "token_expired");
  await clock.advance(0);
  assert.equal(client.state, "disconnected");
  assert.deepEqual(log.errors.map((e) => [e.code, e.status]), [["unauthorized", 401]]);
  await clock.advance(120_000);
  assert.equal(sockets(), 1);
});

test("a token that expired while offline is refreshed before reconnecting", async () => {
  const { client, clock, fetch, log } = setup({ autoRefresh: false, reconnect: { initialDelayMs: 3_700_000, maxDelayMs: 3_700_000 } });
  client.connect();
  await flush();
  ws().accept();
  ws().serverClose(1006);
  await clock.advance(3_700_000); // the token (1 h) expired in the meantime
  const refreshed = fetch.calls.filter((c) => c.path === "/v1/auth/refresh");
  assert.equal(refreshed.length, 1);
  assert.equal(sockets(), 2);
  assert.equal(ws().params.get("token"), log.tokens[0]);
  client.close();
});

test("close 1008 surfaces a policy_violation error and reconnects with backoff", async () => {
  const { client, clock, log } = setup();
  client.connect();
  await flush();
  ws().accept();
  ws().serverClose(1008, "rate limit abuse");
  assert.deepEqual(log.errors.map((e) => [e.code, e.closeCode]), [["policy_violation", 1008]]);
  await clock.advance(999);
  assert.equal(sockets(), 1);
  await clock.advance(1);
  assert.equal(sockets(), 2);
  client.close();
});

test("a silent connection is dropped after the idle timeout and reconnected", async () => {
  const { client, clock } = setup({ pingIntervalMs: 10_000, idleTimeoutMs: 30_000 });
  client.connect();
  await flush();
  ws().accept();
  FakeWebSocket.autoPong = false;
  await clock.advance(30_000);
  assert.equal(ws().sentOf("ping").length, 3);
  assert.equal(client.state, "connected");
  await clock.advance(10_000); // 40 s silent > 30 s
  assert.equal(client.state, "reconnecting");
  assert.equal(FakeWebSocket.instances[0]!.closedWith, 1000);
  client.close();
});

test("transport sse: events from the stream, commands over a WebSocket, acks via POST /v1/ack", async () => {
  const streams: ReturnType<typeof sseStream>[] = [];
  const { client, clock, fetch, log } = setup({ transport: "sse", since: 10, ackEvery: 2 }, (call) => {
    if (call.path === "/v1/events") {
      const s = sseStream();
      streams.push(s);
      return s.response;
    }
    return jsonResponse(200, {});
  });
  client.connect();
  await flush();
  const ev = fetch.calls.find((c) => c.path === "/v1/events")!;
  assert.equal(ev.url, "http://broker:54731/v1/events?last_event_id=10");
  assert.equal(ev.init.headers!["Last-Event-ID"], "10");
  assert.equal(ev.init.headers!.Authorization, `Bearer ${client.token}`);
  assert.equal(ws().params.get("since"), String(Number.MAX_SAFE_INTEGER)); // command socket: no replay
  assert.equal(client.state, "connecting");
  ws().accept();
  assert.equal(client.state, "connected");
  streams[0]!.write("retry: 1000\n\n: keep-alive\n\n" + sseEvent(11) + sseEvent(13).slice(0, 20));
  await flush();
  streams[0]!.write(sseEvent(13).slice(20) + sseEvent(12) + sseEvent(11));
  await flush();
  ws().event(14); // events on the command socket are ignored in sse mode
  assert.deepEqual(log.events, [11, 12, 13]);
  const acks = fetch.calls.filter((c) => c.path === "/v1/ack");
  assert.deepEqual(acks.map((c) => JSON.parse(c.init.body!).sequence_number), [13]); // 12 and 13 came in one go
  assert.equal(acks[0]!.init.headers!.Authorization, `Bearer ${client.token}`);
  const p = client.sendCommand("look");
  assert.equal(ws().sentOf("command")[0].command, "look");
  ws().frame({ type: "command_accepted", id: ws().sentOf("command")[0].id });
  await p;
  streams[0]!.end(); // the broker ended the stream
  await flush();
  assert.equal(client.state, "reconnecting");
  await clock.advance(1000);
  const again = fetch.calls.filter((c) => c.path === "/v1/events")[1]!;
  assert.equal(again.init.headers!["Last-Event-ID"], "13");
  client.close();
});

test("transport sse: the resync_required marker has no id; the previous id is not taken for its sequence number", async () => {
  const streams: ReturnType<typeof sseStream>[] = [];
  const { client, clock, fetch, log } = setup({ transport: "sse", since: 5, ackEvery: 1000 }, (call) => {
    if (call.path === "/v1/events") {
      const s = sseStream();
      streams.push(s);
      return s.response;
    }
    return jsonResponse(200, {});
  });
  client.connect();
  await flush();
  ws().accept();
  streams[0]!.write(sseEvent(6) + 'event: resync_required\ndata: {"oldest_available":100}\n\n');
  await flush();
  assert.deepEqual(log.events, [6]);
  assert.deepEqual(log.resyncs, [100]);
  assert.equal(client.lastSequenceNumber, 99);
  streams[0]!.write(sseEvent(100) + sseEvent(101));
  await flush();
  assert.deepEqual(log.events, [6, 100, 101]);
  streams[0]!.end();
  await flush();
  await clock.advance(1000);
  const again = fetch.calls.filter((c) => c.path === "/v1/events")[1]!;
  assert.equal(again.init.headers!["Last-Event-ID"], "101");
  client.close();
});

test("transport sse without a command socket: connected on the stream alone, commands rejected", async () => {
  const { client, fetch } = setup({ transport: "sse", commandSocket: false }, (call) =>
    call.path === "/v1/events" ? sseStream().response : jsonResponse(200, {}),
  );
  client.connect();
  await flush();
  assert.equal(sockets(), 0);
  assert.equal(client.state, "connected");
  assert.equal(fetch.calls[0]!.init.headers!["Last-Event-ID"], undefined);
  await assert.rejects(client.sendCommand("look"), { code: "no_command_channel" });
  client.close();
});

test("transport sse: a 401 from the stream refreshes the token and retries at once", async () => {
  let first = true;
  const { client, clock, fetch, log } = setup({ transport: "sse", commandSocket: false, autoRefresh: false }, (call) => {
    if (call.path === "/v1/auth/refresh")
      return jsonResponse(200, { access_token: "fresh", token_type: "Bearer", expires_in: 3600, player_id: "alice" });
    if (first) {
      first = false;
      return jsonResponse(401, { error: { code: "unauthorized", message: "expired" } });
    }
    return sseStream().response;
  });
  client.connect();
  await clock.advance(0);
  assert.deepEqual(log.tokens, ["fresh"]);
  const streams = fetch.calls.filter((c) => c.path === "/v1/events");
  assert.equal(streams.length, 2);
  assert.equal(streams[1]!.init.headers!.Authorization, "Bearer fresh");
  assert.equal(client.state, "connected");
  assert.deepEqual(log.errors, []);
  client.close();
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, decodeJwt, login, logout, MythosError, refreshAccessToken, refreshDelay, resumeSession, SseParser } from "../client.js";
import { fakeFetch, jsonResponse, jwt } from "../test-support/helpers.js";

test("backoff: 1, 2, 4, 8, 16 s, then capped at 30 s (no jitter at random = 0.5)", () => {
  const delays = [1, 2, 3, 4, 5, 6, 7, 20, 100].map((n) => backoffDelay(n, {}, () => 0.5));
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
});

test("backoff: jitter stays within ±20 % and never exceeds the cap", () => {
  for (const attempt of [1, 2, 3, 4, 5, 6, 9]) {
    const base = Math.min(30000, 1000 * 2 ** (attempt - 1));
    const lo = backoffDelay(attempt, {}, () => 0);
    const hi = backoffDelay(attempt, {}, () => 0.999999);
    assert.equal(lo, Math.round(base * 0.8));
    assert.equal(hi, Math.min(30000, Math.round(base * 1.2)));
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, {}, Math.random);
      assert.ok(d >= base * 0.8 - 1 && d <= Math.min(30000, base * 1.2) + 1, `attempt ${attempt}: ${d}`);
    }
  }
});

test("backoff: options are honoured", () => {
  const o = { initialDelayMs: 100, maxDelayMs: 1000, factor: 3, jitter: 0 };
  assert.deepEqual([1, 2, 3, 4].map((n) => backoffDelay(n, o, () => 0.9)), [100, 300, 900, 1000]);
});

test("decodeJwt reads base64url payloads without verifying", () => {
  const t = jwt({ sub: "al?ce>>", exp: 2000000000, iat: 1999996400, note: "ü~~" });
  assert.deepEqual(decodeJwt(t), { sub: "al?ce>>", exp: 2000000000, iat: 1999996400, note: "ü~~" });
  assert.equal(decodeJwt("not-a-jwt"), null);
  assert.equal(decodeJwt("a.!!!.c"), null);
});

test("refreshDelay: exp minus min(60 s, 10 % of the lifetime)", () => {
  const now = 1_700_000_000_000;
  const iat = now / 1000;
  assert.equal(refreshDelay(jwt({ iat, exp: iat + 3600 }), now), 3540_000); // 1 h: 60 s before
  assert.equal(refreshDelay(jwt({ iat, exp: iat + 300 }), now), 270_000); // 5 min: 30 s before
  assert.equal(refreshDelay(jwt({ iat, exp: iat + 3600 }), now + 3590_000), 0); // overdue
  assert.equal(refreshDelay(jwt({ exp: iat + 100 }), now), 90_000); // no iat: lifetime from now
  assert.equal(refreshDelay(jwt({ sub: "x" }), now), null);
});

test("SseParser: fields, comments, multi-line data, CRLF split across chunks", () => {
  const p = new SseParser();
  const out = [
    ...p.push("retry: 1000\n\n: keep-alive\n\nid: 4"),
    ...p.push("2\nevent: chat_message\ndata: {\"a\":1}\r"),
    ...p.push("\n\r\ndata:x\ndata: y\n\nevent: e\n"),
    ...p.push("data\n\n"),
  ];
  assert.deepEqual(out, [
    { id: "42", event: "chat_message", data: '{"a":1}' },
    { id: "42", event: "message", data: "x\ny" },
    { id: "42", event: "e", data: "" },
  ]);
});

test("login posts credentials and returns the token body", async () => {
  const f = fakeFetch(() => jsonResponse(200, { access_token: "T", token_type: "Bearer", expires_in: 3600, player_id: "alice" }));
  const r = await login("http://broker:54731/", "alice", "pw", { fetch: f });
  assert.deepEqual(r, { access_token: "T", token_type: "Bearer", expires_in: 3600, player_id: "alice" });
  assert.equal(f.calls[0]!.url, "http://broker:54731/v1/auth/login");
  assert.equal(f.calls[0]!.init.method, "POST");
  assert.deepEqual(JSON.parse(f.calls[0]!.init.body!), { username: "alice", password: "pw" });
});

test("login failure surfaces the broker's code and message", async () => {
  const f = fakeFetch(() => jsonResponse(401, { error: { code: "invalid_credentials", message: "wrong username or password" } }));
  await assert.rejects(login("http://b", "alice", "bad", { fetch: f }), (e: unknown) => {
    assert.ok(e instanceof MythosError);
    assert.equal(e.code, "invalid_credentials");
    assert.equal(e.message, "wrong username or password");
    assert.equal(e.status, 401);
    return true;
  });
});

test("non-JSON error bodies and network failures become MythosErrors", async () => {
  const f = fakeFetch(() => new Response("bad gateway", { status: 502 }));
  await assert.rejects(login("http://b", "a", "p", { fetch: f }), { code: "http_502", status: 502 });
  const down = fakeFetch(() => Promise.reject(new TypeError("fetch failed")));
  await assert.rejects(login("http://b", "a", "p", { fetch: down }), { code: "network_error" });
});

test("refreshAccessToken sends the old token as Bearer", async () => {
  const f = fakeFetch(() => jsonResponse(200, { access_token: "NEW", token_type: "Bearer", expires_in: 3600, player_id: "alice" }));
  const r = await refreshAccessToken("http://b", "OLD", { fetch: f });
  assert.equal(r.access_token, "NEW");
  assert.equal(f.calls[0]!.path, "/v1/auth/refresh");
  assert.equal(f.calls[0]!.init.headers!.Authorization, "Bearer OLD");
});

test("login with remember asks for the refresh cookie; resumeSession and logout post to their routes", async () => {
  const body = { access_token: "T", token_type: "Bearer", expires_in: 3600, player_id: "alice" };
  const f = fakeFetch(() => jsonResponse(200, body));
  await login("http://b", "alice", "pw", { fetch: f, remember: true });
  assert.deepEqual(JSON.parse(f.calls[0]!.init.body!), { username: "alice", password: "pw", remember: true });
  assert.deepEqual(await resumeSession("http://b", { fetch: f }), body);
  assert.equal(f.calls[1]!.path, "/v1/auth/session");
  assert.equal(f.calls[1]!.init.method, "POST");
  assert.equal(f.calls[1]!.init.headers!.Authorization, undefined);
  const out = fakeFetch(() => jsonResponse(200, { revoked: true }));
  assert.deepEqual(await logout("http://b", "TOK", { fetch: out }), { revoked: true });
  assert.equal(out.calls[0]!.path, "/v1/auth/logout");
  assert.equal(out.calls[0]!.init.headers!.Authorization, "Bearer TOK");
  const gone = fakeFetch(() => jsonResponse(401, { error: { code: "unauthorized", message: "no refresh cookie" } }));
  await assert.rejects(resumeSession("http://b", { fetch: gone }), { code: "unauthorized", status: 401 });
});

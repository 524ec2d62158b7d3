import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { MythosClient, type EventEnvelope } from "../client.js";
import {
  RecordingError,
  assertView,
  collectEvents,
  parseRecording,
  replayDelays,
  replayRecording,
  startBroker,
  viewOf,
} from "../testkit.js";
import { fakeFetch, jsonResponse, type Call } from "../test-support/helpers.js";

const REC = [
  `{"event_type":"room_state","sequence_number":7,"timestamp":"2026-11-23T10:30:00.000Z","player_id":"alice","room_id":"tavern","data":{"room":"tavern","players":["bob"]},"id":null}`,
  `{"event_type":"chat_message","sequence_number":8,"timestamp":"2026-11-23T10:30:02.000Z","player_id":"alice","room_id":null,"data":{"from":"bob","message":"hi"},"id":"c-1"}`,
  `{"event_type":"game_tick","sequence_number":10,"timestamp":"2026-11-23T10:30:03.000Z","player_id":"alice","room_id":null,"data":{"text":"A bell tolls."},"id":null}`,
].join("\n");

test("a recording parses; a bad line is named", () => {
  const evs = parseRecording(REC + "\n\n");
  assert.deepEqual(
    evs.map((e) => e.sequence_number),
    [7, 8, 10],
  );
  assert.deepEqual(viewOf(evs)[1], ["chat_message", { from: "bob", message: "hi" }]);
  const lines = REC.split("\n");
  for (const [bad, line] of [
    [[lines[0], "not json"], 2],
    [[lines[0], lines[0]], 2],
    [[lines[0], lines[1].replace("alice", "bob")], 2],
    [[lines[0].replace('"timestamp":"2026-11-23T10:30:00.000Z"', '"timestamp":"yesterday"')], 1],
    [[lines[0].replace('"player_id":"alice"', '"player_id":"a b"')], 1],
  ] as const) {
    assert.throws(
      () => parseRecording(bad.join("\n")),
      (e: unknown) => e instanceof RecordingError && e.line === line,
      bad.join("\n"),
    );
  }
});

test("pacing keeps the recorded gaps, divided by the speed", () => {
  const evs = parseRecording(REC);
  assert.deepEqual(replayDelays(evs, 1), [0, 2000, 3000]);
  assert.deepEqual(replayDelays(evs, 10), [0, 200, 300]);
  assert.deepEqual(replayDelays(evs, "max"), [0, 0, 0]);
});

test("a replay publishes each event in order with an id derived from the original", async () => {
  let seq = 0;
  const slept: number[] = [];
  const fetch = fakeFetch((call: Call) => {
    assert.equal(call.path, "/v1/publish");
    return jsonResponse(200, { deliveries: [{ player_id: "q", sequence_number: ++seq }] });
  });
  const seqs = await replayRecording(
    { baseUrl: "http://broker:1", token: "t", fetch, speed: 1, sleep: async (ms) => void slept.push(ms) },
    parseRecording(REC),
    "q",
  );
  assert.deepEqual(seqs, [1, 2, 3]);
  assert.deepEqual(slept, [2000, 1000]);
  const bodies = fetch.calls.map((c: Call) => JSON.parse(String(c.init.body)));
  assert.deepEqual(
    bodies.map((b: any) => b.id),
    ["replay:alice:7", "replay:alice:8", "replay:alice:10"],
  );
  assert.deepEqual(bodies[0].to, { player: "q" });
  assert.equal(bodies[0].room_id, "tavern");
  assert.equal("room_id" in bodies[1], false);
});

test("assertView tells a match from a mismatch and a gap", () => {
  const evs = parseRecording(REC);
  const got = (seqs: number[]): EventEnvelope[] => evs.map((e, i) => ({ ...e, sequence_number: seqs[i] }));
  assertView(got([1, 2, 3]), viewOf(evs));
  assert.throws(() => assertView(got([1, 3, 4]), viewOf(evs)), /gap or a duplicate/);
  const wrong = viewOf(evs);
  wrong[2] = ["game_tick", { text: "A bell rings." }];
  assert.throws(() => assertView(got([1, 2, 3]), wrong), /event 3/);
});

/** The broker binary the Rust suite builds (scripts/test runs it first). */
function brokerBinary(): string {
  const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
  const target = process.env.CARGO_TARGET_DIR ?? resolve(repo, "target");
  const bin = process.env.MYTHOS_BROKER_BIN ?? resolve(target, "debug/mythos-broker");
  if (!existsSync(bin))
    throw new Error(`${bin} not found: run \`cargo build\` at the repository root first (or set MYTHOS_BROKER_BIN)`);
  return bin;
}

test("end to end: a real broker, a replay, a client's view", async () => {
  const broker = await startBroker(brokerBinary());
  try {
    const rec = parseRecording(REC);
    const client = new MythosClient({
      baseUrl: broker.baseUrl,
      token: broker.token("alice2", "player"),
      transport: "sse",
      commandSocket: false,
      autoRefresh: false,
    });
    const received = collectEvents(client, rec.length, 10_000);
    client.connect();
    await new Promise<void>((r) => {
      const off = client.on("state", (s) => {
        if (s === "connected") {
          off();
          r();
        }
      });
    });
    const seqs = await replayRecording({ baseUrl: broker.baseUrl, token: broker.token("game", "service") }, rec, "alice2");
    assert.deepEqual(seqs, [1, 2, 3]);
    const got = await received;
    assertView(got, viewOf(rec));
    assert.deepEqual(
      got.map((e) => e.sequence_number),
      [1, 2, 3],
    );
    assert.equal(got[1].id, "replay:alice:8");
    client.close();
  } finally {
    await broker.stop();
  }
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { SequenceTracker, type Delivery } from "../client.js";
import { envelope } from "../test-support/helpers.js";

const resync = (seq: number, oldest: number) => envelope(seq, "resync_required", { oldest_available: oldest });
/** Delivered sequence numbers; a resync shows as "R<seq>". */
const seqs = (ds: Delivery[]) => ds.map((d) => (d.kind === "resync" ? `R${d.event.sequence_number}` : d.event.sequence_number));
const pushAll = (t: SequenceTracker, list: number[]) => list.flatMap((n) => seqs(t.push(envelope(n))));

test("in-order events are delivered once each and advance the position", () => {
  const t = new SequenceTracker(0);
  assert.deepEqual(pushAll(t, [1, 2, 3]), [1, 2, 3]);
  assert.equal(t.position, 3);
});

test("duplicates and anything at or below the position are dropped", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(pushAll(t, [3, 5, 6, 6, 4, 7, 7, 6]), [6, 7]);
  assert.equal(t.position, 7);
});

test("out-of-order events are buffered until the gap is filled", () => {
  const t = new SequenceTracker(0);
  assert.deepEqual(pushAll(t, [3, 5, 4]), []);
  assert.equal(t.buffered, 3);
  assert.equal(t.position, 0);
  assert.deepEqual(pushAll(t, [4]), []); // duplicate of a buffered event
  assert.deepEqual(pushAll(t, [2]), []);
  assert.deepEqual(pushAll(t, [1]), [1, 2, 3, 4, 5]);
  assert.equal(t.buffered, 0);
  assert.equal(t.position, 5);
});

test("an unknown start begins at the first event seen", () => {
  const t = new SequenceTracker();
  assert.equal(t.position, null);
  assert.deepEqual(pushAll(t, [41, 42, 41]), [41, 42]);
  assert.equal(t.position, 42);
});

test("init sets an unknown position only", () => {
  const t = new SequenceTracker();
  t.init(10);
  assert.deepEqual(pushAll(t, [10, 12, 11]), [11, 12]);
  t.init(0);
  assert.equal(t.position, 12);
});

test("resync: R first, then S..L replayed, then live after R", () => {
  // Client had 5; the broker retains 100..200, appends resync_required as 201.
  const t = new SequenceTracker(5);
  const first = t.push(resync(201, 100));
  assert.deepEqual(seqs(first), ["R201"]);
  assert.equal(first[0]!.kind === "resync" && first[0]!.oldestAvailable, 100);
  assert.equal(t.position, 99); // expecting 100 next; never acknowledges past the replay
  const replay = Array.from({ length: 101 }, (_, i) => 100 + i); // 100..200
  assert.deepEqual(pushAll(t, replay), replay);
  assert.equal(t.position, 201); // the resync's own number counts as delivered
  assert.deepEqual(pushAll(t, [201, 202, 203]), [202, 203]);
});

test("resync: interrupted replay, resumed from the position, replays R again without a second resync", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(seqs(t.push(resync(201, 100))), ["R201"]);
  assert.deepEqual(pushAll(t, [100, 101, 102]), [100, 101, 102]);
  // Reconnect with since=102: 103..200, then the stored resync event 201 itself, then live.
  const out = [...pushAll(t, [103, 104]), ...seqs(t.push(resync(201, 100))), ...pushAll(t, [105, 202])];
  assert.deepEqual(out, [103, 104, 105]);
  assert.equal(t.buffered, 1); // 202 waits for 106..200
  const rest = Array.from({ length: 95 }, (_, i) => 106 + i); // 106..200
  assert.deepEqual(pushAll(t, rest), [...rest, 202]);
  assert.equal(t.position, 202);
});

test("resync drops buffered events older than the oldest available, keeps later ones", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(pushAll(t, [8, 120]), []); // 6, 7 never come: they were trimmed
  assert.deepEqual(seqs(t.push(resync(201, 100))), ["R201"]);
  assert.equal(t.buffered, 1); // 120 kept, 8 dropped
  const replay = Array.from({ length: 101 }, (_, i) => 100 + i);
  assert.deepEqual(pushAll(t, replay), replay); // 120 exactly once
  assert.equal(t.position, 201);
});

test("a resync_required that announces no gap is consumed silently in order", () => {
  // Another connection caused resync 160 (oldest 100); this client already has 150.
  const t = new SequenceTracker(150);
  assert.deepEqual(pushAll(t, [151, 152]), [151, 152]);
  assert.deepEqual(seqs(t.push(resync(160, 100))), []);
  assert.deepEqual(pushAll(t, [153, 154, 155, 156, 157, 158, 159, 161]), [153, 154, 155, 156, 157, 158, 159, 161]);
  assert.equal(t.position, 161);
});

test("resync with nothing to replay (oldest available = its own number)", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(seqs(t.push(resync(50, 50))), ["R50"]);
  assert.equal(t.position, 50);
  assert.deepEqual(pushAll(t, [50, 51]), [51]);
});

test("unknown start: a leading resync followed by its replay is fresh", () => {
  const t = new SequenceTracker();
  assert.deepEqual(seqs(t.push(resync(201, 100))), []); // held until the next event decides
  assert.deepEqual(pushAll(t, [100, 101]), ["R201", 100, 101]);
  assert.equal(t.position, 101);
});

test("unknown start: a leading old resync followed by live events is a marker", () => {
  const t = new SequenceTracker();
  assert.deepEqual(seqs(t.push(resync(160, 100))), []);
  assert.deepEqual(seqs(t.push(resync(160, 100))), []); // duplicate while held
  assert.deepEqual(pushAll(t, [161, 162]), [161, 162]);
  assert.equal(t.position, 162);
});

test("invalid sequence numbers are ignored", () => {
  const t = new SequenceTracker(0);
  assert.deepEqual(pushAll(t, [0, -1, 1.5, NaN]), []);
  assert.equal(t.position, 0);
});

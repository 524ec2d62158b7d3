import { test } from "node:test";
import assert from "node:assert/strict";
import { SequenceTracker, type Delivery } from "../client.js";
import { envelope } from "../test-support/helpers.js";

/** Delivered sequence numbers; a resync shows as "R<oldest_available>". */
const seqs = (ds: Delivery[]) => ds.map((d) => (d.kind === "resync" ? `R${d.oldestAvailable}` : d.event.sequence_number));
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

test("resync: the marker first, then S..L replayed, then live", () => {
  // Client had 5; the broker retains 100..200 and sends the marker (no sequence number).
  const t = new SequenceTracker(5);
  const first = t.resync(100);
  assert.deepEqual(seqs(first), ["R100"]);
  assert.equal(t.position, 99); // expecting 100 next; never acknowledges past the replay
  const replay = Array.from({ length: 101 }, (_, i) => 100 + i); // 100..200
  assert.deepEqual(pushAll(t, replay), replay);
  assert.deepEqual(pushAll(t, [200, 201, 202]), [201, 202]);
  assert.equal(t.position, 202);
});

test("resync: an interrupted replay resumed from the position gets no second resync", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(seqs(t.resync(100)), ["R100"]);
  assert.deepEqual(pushAll(t, [100, 101, 102]), [100, 101, 102]);
  // Reconnect with since=102: the broker sends no marker; 103.. follow.
  assert.deepEqual(pushAll(t, [103, 104]), [103, 104]);
  // A reconnect from an older point (e.g. the acked cursor) may get the marker again: no gap, ignored.
  assert.deepEqual(seqs(t.resync(100)), []);
  assert.deepEqual(pushAll(t, [105]), [105]);
});

test("resync drops buffered events older than the oldest available, keeps later ones", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(pushAll(t, [8, 120]), []); // 6, 7 never come: they were trimmed
  assert.deepEqual(seqs(t.resync(100)), ["R100"]);
  assert.equal(t.buffered, 1); // 120 kept, 8 dropped
  const replay = Array.from({ length: 101 }, (_, i) => 100 + i);
  assert.deepEqual(pushAll(t, replay), replay); // 120 exactly once
  assert.equal(t.position, 200);
});

test("a resync that announces no gap is ignored", () => {
  const t = new SequenceTracker(150);
  assert.deepEqual(seqs(t.resync(100)), []);
  assert.deepEqual(seqs(t.resync(151)), []);
  assert.equal(t.position, 150);
  assert.deepEqual(pushAll(t, [151]), [151]);
});

test("resync with nothing retained (oldest available = the next event)", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(seqs(t.resync(51)), ["R51"]);
  assert.equal(t.position, 50);
  assert.deepEqual(pushAll(t, [51, 52]), [51, 52]);
});

test("resync drains buffered events that now follow the position", () => {
  const t = new SequenceTracker(5);
  assert.deepEqual(pushAll(t, [100, 101]), []);
  assert.deepEqual(seqs(t.resync(100)), ["R100", 100, 101]);
  assert.equal(t.position, 101);
});

test("unknown start: a leading resync sets the position", () => {
  const t = new SequenceTracker();
  assert.deepEqual(seqs(t.resync(100)), ["R100"]);
  assert.deepEqual(pushAll(t, [100, 101]), [100, 101]);
  assert.equal(t.position, 101);
});

test("invalid resync values are ignored", () => {
  const t = new SequenceTracker(5);
  for (const v of [0, -1, 1.5, NaN]) assert.deepEqual(seqs(t.resync(v)), []);
  assert.equal(t.position, 5);
});

test("invalid sequence numbers are ignored", () => {
  const t = new SequenceTracker(0);
  assert.deepEqual(pushAll(t, [0, -1, 1.5, NaN]), []);
  assert.equal(t.position, 0);
});

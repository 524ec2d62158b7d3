// The exactly-once-in-order checks shared by the browser tests.
import assert from "node:assert/strict";

/** Sequence numbers rendered: each exactly once, in order, with no gap. */
export function assertExactlyOnceInOrder(seqs) {
  assert.ok(seqs.length > 0, "no events rendered");
  const expected = seqs.map((_, i) => seqs[0] + i);
  assert.deepEqual(seqs, expected, "rendered sequence numbers are not consecutive and unique");
}

/** command id → number of command_response events that answered it. */
export function responsesById(events) {
  const counts = new Map();
  for (const e of events) {
    if (e.type === "command_response" && e.commandId) counts.set(e.commandId, (counts.get(e.commandId) ?? 0) + 1);
  }
  return counts;
}

/** The `n` of every numbered test event rendered, in rendering order. */
export function storyNumbers(lines) {
  return lines.map((l) => l.match(/^Story line (\d+) of \d+$/)).filter(Boolean).map((m) => Number(m[1]));
}

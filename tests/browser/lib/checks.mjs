// The exactly-once-in-order checks shared by the browser tests.
import assert from "node:assert/strict";

/** Sequence numbers rendered: each exactly once, in order, with no gap. */
export function assertExactlyOnceInOrder(seqs) {
  assert.ok(seqs.length > 0, "no events rendered");
  const expected = seqs.map((_, i) => seqs[0] + i);
  assert.deepEqual(seqs, expected, "rendered sequence numbers are not consecutive and unique");
}

/**
 * The raw event frames (as received, before the client de-duplicates): their
 * sequence numbers are exactly `first, first+1, ...` with no gap, no
 * duplicate, across every socket the page opened, starting at `first`; and
 * the fence (a frame matching `isFence`, sent last by the test) arrived once
 * with nothing but ambient ticks after it, so a late duplicate cannot hide.
 */
export function assertRawExactlyOnceInOrder(frames, { first = 1, isFence } = {}) {
  assert.ok(frames.length > 0, "no raw event frames recorded");
  const seqs = frames.map((f) => f.seq);
  const expected = seqs.map((_, i) => first + i);
  assert.deepEqual(seqs, expected, `raw frames are not exactly ${first}..: ${JSON.stringify(frames)}`);
  if (isFence) {
    assert.equal(isFence({ command_id: null }), false, "a fence that matches every event");
    const at = frames.findIndex(isFence);
    assert.ok(at >= 0, "the fence frame arrived");
    assert.equal(frames.filter(isFence).length, 1, "the fence arrived once");
    // Only the world's own ambient ticks (every 10 s, to every room) may follow it.
    const after = frames.slice(at + 1).filter((f) => f.event_type !== "game_tick");
    assert.deepEqual(after, [], "nothing but ambient ticks arrives after the fence");
  }
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

/**
 * Types `look` as the fence command and waits until its answer arrives as a
 * raw frame. The demo world answers commands in the order of the command
 * stream, so every earlier command (and any duplicate of one) is answered
 * before it. Returns the fence's command id.
 */
export async function fenceCommand(page, type, rawFrames, timeout = 20000) {
  const before = await page.evaluate(() => window.mythos.commands.length);
  await type(page, "look");
  const deadline = Date.now() + timeout;
  // The page records a command's id once the broker accepted it.
  let id = null;
  while (!id) {
    id = await page.evaluate((n) => window.mythos.commands[n]?.id ?? null, before);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for the fence to be accepted`);
    if (!id) await new Promise((r) => setTimeout(r, 50));
  }
  while (!(await rawFrames(page)).some((f) => f.command_id === id)) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for the fence's answer (${id})`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return id;
}

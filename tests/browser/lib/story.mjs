// A numbered stream of events published to one player while a test pulls the
// network or restarts the broker: "Story line i of N", i = 1..N.
import { publish, sleep } from "./broker.mjs";

const GIVE_UP_MS = 30000;

/**
 * Starts publishing; returns {published, done}: `published` counts the events
 * the broker has confirmed, `done` settles when all are. A publish that fails
 * (the broker is down) is retried with the same idempotency id, so it is
 * appended once however often it is sent.
 */
export function startStory(broker, { player = "alice", n, everyMs = 30 }) {
  const story = { published: 0, done: null };
  story.done = (async () => {
    for (let i = 1; i <= n; i++) {
      const body = {
        to: { player },
        event_type: "narration",
        data: { text: `Story line ${i} of ${n}`, n: i },
        id: `story-${i}`,
      };
      const started = Date.now();
      for (;;) {
        try {
          await publish(broker, body);
          break;
        } catch (e) {
          if (Date.now() - started > GIVE_UP_MS) throw new Error(`story line ${i} not published: ${e.message}`);
          await sleep(100);
        }
      }
      story.published = i;
      await sleep(everyMs);
    }
  })();
  return story;
}

/** Polls `predicate` every 50 ms until it holds; fails after `ms`. */
export async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

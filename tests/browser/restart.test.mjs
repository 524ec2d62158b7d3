// Restarting the broker on Redis: while a numbered stream of events is being
// published to alice, the broker process is stopped and started again (same
// port, same JWT secret, same Redis). The page reconnects by itself, shows
// every published event exactly once, in order, and each command typed while
// the broker was down is executed exactly once.
//
// Needs `redis-server` on PATH (or REDIS_SERVER); without it the test fails
// and says so (never a silent skip).
import assert from "node:assert/strict";
import { test } from "node:test";
import { artifact, launch, loginAs, newContext, rawFrames, snapshot, type, waitForLine } from "./lib/browser.mjs";
import { freePort, startBroker, startRedis } from "./lib/broker.mjs";
import { assertExactlyOnceInOrder, assertRawExactlyOnceInOrder, fenceCommand, responsesById, storyNumbers } from "./lib/checks.mjs";
import { startStory, until } from "./lib/story.mjs";

const N = 200;
const SECRET = "browser-test-secret-0123456789abcdef";

test("broker restart on Redis: every event once and in order, queued commands run once", async () => {
  const redis = await startRedis();
  const port = await freePort();
  const env = { MYTHOS_REDIS_URL: redis.url, MYTHOS_JWT_SECRET: SECRET };
  let broker;
  let browser;
  try {
    broker = await startBroker({ port, env });
    browser = await launch();
    const context = await newContext(browser, { viewport: { width: 1000, height: 720 } });
    const page = await context.newPage();
    await loginAs(page, broker.url, "alice");

    // Publishes retry while the broker is down; the first run's service
    // token stays valid because the secret is the same.
    const story = startStory(broker, { n: N });
    await waitForLine(page, /^Story line 20 of/);
    await broker.stop();
    await page.waitForFunction(() => window.mythos.state === "reconnecting");

    const typed = ["look", "say anyone there?", "who"];
    for (const line of typed) await type(page, line);
    const queued = (await snapshot(page)).commands.slice(-typed.length);
    assert.deepEqual(queued.map((c) => [c.input, c.status]), typed.map((t) => [t, "queued"]));

    // The page keeps trying while the broker is down (its attempts fail).
    await until(async () => (await page.evaluate(() => window.__sockets.length)) >= 3, 20000, "reconnect attempts");
    assert.equal((await snapshot(page)).state, "reconnecting");
    await page.screenshot({ path: artifact("terminal-broker-down.png") });
    broker = await startBroker({ port, env });
    await page.waitForFunction(() => window.mythos.state === "connected", null, { timeout: 20000 });

    await story.done;
    await until(() => story.published === N, 1000, "the whole story");
    await waitForLine(page, new RegExp(`^Story line ${N} of ${N}$`), 20000);
    await page.waitForFunction(
      (n) => {
        const m = window.mythos;
        const answered = new Set(m.events.map((e) => e.commandId));
        return m.commands.slice(-n).every((c) => c.status === "accepted" && answered.has(c.id));
      },
      typed.length,
      { timeout: 20000 },
    );
    // A fence instead of a pause: any duplicate answer or event comes before it.
    const fence = await fenceCommand(page, type, rawFrames);

    const s = await snapshot(page);
    // What the broker sent, before the client's de-duplication: from 1, each once, in order.
    assertRawExactlyOnceInOrder(await rawFrames(page), { first: 1, isFence: (f) => f.command_id === fence });
    assert.deepEqual(storyNumbers(s.lines), Array.from({ length: N }, (_, i) => i + 1));
    assertExactlyOnceInOrder(s.seqs);
    const answers = responsesById(s.events);
    for (const c of s.commands) assert.equal(answers.get(c.id), 1, `answers to ${c.input} (${c.id})`);
    await page.screenshot({ path: artifact("terminal-after-restart.png") });
    await context.close();
  } finally {
    await browser?.close();
    await broker?.stop();
    await redis.stop();
  }
});

// Restarting the broker on Redis: while a numbered stream of events is being
// published to alice, the broker process is stopped and started again (same
// port, same JWT secret, same Redis). The page reconnects by itself, shows
// every published event exactly once, in order, and each command typed while
// the broker was down is executed exactly once.
//
// Needs `redis-server` on PATH (or REDIS_SERVER) and a broker built with the
// Redis engine; skipped, with the reason, when either is missing.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { artifact, launch, loginAs, snapshot, type, waitForLine } from "./lib/browser.mjs";
import { freePort, sleep, startBroker, startRedis } from "./lib/broker.mjs";
import { assertExactlyOnceInOrder, responsesById, storyNumbers } from "./lib/checks.mjs";
import { startStory, until } from "./lib/story.mjs";

const N = 200;
const SECRET = "browser-test-secret-0123456789abcdef";

function haveRedis() {
  try {
    execFileSync(process.env.REDIS_SERVER ?? "redis-server", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

test("broker restart on Redis: every event once and in order, queued commands run once", async (t) => {
  if (!haveRedis()) {
    t.skip("redis-server is not installed (apt-get install -y redis-server)");
    return;
  }
  const redis = await startRedis();
  const port = await freePort();
  const env = { MYTHOS_REDIS_URL: redis.url, MYTHOS_JWT_SECRET: SECRET };
  let broker;
  let browser;
  try {
    try {
      broker = await startBroker({ port, env });
    } catch (e) {
      if (/redis engine not built yet/.test(e.message)) {
        t.skip("this broker build has no Redis engine yet");
        return;
      }
      throw e;
    }
    browser = await launch();
    const context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
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

    await sleep(1500);
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
    await sleep(500); // room for any duplicate to show up

    const s = await snapshot(page);
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

// Pulling the network on the embedded engine: while a numbered stream of
// events is being published to alice, the page goes offline and its sockets
// are cut; commands typed meanwhile queue. Once the network is back the page
// reconnects by itself, shows every published event exactly once, in order,
// and each queued command is executed exactly once. And when the embedded
// broker restarts (forgetting every session), the page notices and asks the
// player to log in again instead of retrying forever.
import assert from "node:assert/strict";
import { test } from "node:test";
import { artifact, launch, loginAs, newContext, rawFrames, snapshot, type, waitForLine } from "./lib/browser.mjs";
import { freePort, startBroker } from "./lib/broker.mjs";
import { assertExactlyOnceInOrder, assertRawExactlyOnceInOrder, fenceCommand, responsesById, storyNumbers } from "./lib/checks.mjs";
import { startStory, until } from "./lib/story.mjs";

const N = 200;
const OFFLINE_UNTIL = 70; // the network comes back once this many were published

test("offline and back: every event once and in order, queued commands run once", async () => {
  const broker = await startBroker();
  const browser = await launch();
  try {
    // Records every raw frame, and every WebSocket (so the test can cut them).
    const context = await newContext(browser, { viewport: { width: 1000, height: 720 } });
    const page = await context.newPage();
    await loginAs(page, broker.url, "alice");

    const story = startStory(broker, { n: N });
    await waitForLine(page, /^Story line 20 of/);
    await context.setOffline(true);
    await page.evaluate(() => window.__sockets.forEach((s) => s.close()));
    await page.waitForFunction(() => window.mythos.state === "reconnecting");

    const typed = ["look", "say anyone there?", "who"];
    for (const line of typed) await type(page, line);
    const queued = (await snapshot(page)).commands.slice(-typed.length);
    assert.deepEqual(queued.map((c) => [c.input, c.status]), typed.map((t) => [t, "queued"]));

    // Offline while events keep coming; the page's reconnect attempts fail.
    await until(() => story.published >= OFFLINE_UNTIL, 20000, "the story to go on");
    assert.equal((await snapshot(page)).state, "reconnecting");
    assert.match(await page.textContent("#status-label"), /reconnecting/);
    await page.screenshot({ path: artifact("terminal-offline.png") });
    await context.setOffline(false);
    await page.waitForFunction(() => window.mythos.state === "connected", null, { timeout: 20000 });
    assert.ok(story.published < N, "the story goes on after the reconnect");

    await story.done;
    await waitForLine(page, new RegExp(`^Story line ${N} of ${N}$`), 20000);
    await page.waitForFunction(
      (n) => {
        const m = window.mythos;
        const sent = m.commands.slice(-n);
        const answered = new Set(m.events.map((e) => e.commandId));
        return sent.every((c) => c.status === "accepted" && answered.has(c.id));
      },
      typed.length,
      { timeout: 20000 },
    );
    // A fence instead of a pause: any duplicate answer or event comes before it.
    const fence = await fenceCommand(page, type, rawFrames);

    const s = await snapshot(page);
    // What the broker sent, before the client's de-duplication: from 1, each once, in order.
    assertRawExactlyOnceInOrder(await rawFrames(page), { first: 1, isFence: (f) => f.command_id === fence });
    assert.equal(s.state, "connected");
    assert.deepEqual(storyNumbers(s.lines), Array.from({ length: N }, (_, i) => i + 1));
    assertExactlyOnceInOrder(s.seqs);
    const answers = responsesById(s.events);
    for (const c of s.commands) assert.equal(answers.get(c.id), 1, `answers to ${c.input} (${c.id})`);
    assert.ok(s.lines.includes("You say: anyone there?"));
    assert.ok(s.lines.includes("Reconnected."));
    const sockets = await page.evaluate(() => window.__sockets.length);
    assert.ok(sockets >= 2, `the page reconnected (${sockets} sockets)`);
    await page.screenshot({ path: artifact("terminal-after-reconnect.png") });
    await context.close();
  } finally {
    await browser.close();
    await broker.stop();
  }
});

test("a restarted embedded broker sends the player back to the login form", async () => {
  const port = await freePort();
  let broker = await startBroker({ port });
  const browser = await launch();
  try {
    const page = await (await newContext(browser)).newPage();
    await loginAs(page, broker.url, "alice");
    await broker.stop();
    await page.waitForFunction(() => window.mythos.state === "reconnecting");
    broker = await startBroker({ port }); // a new generated secret: the old token is void
    await page.waitForSelector("#login-view:not([hidden])", { timeout: 30000 });
    assert.match(await page.textContent("#login-error"), /log in again/);
    assert.equal((await snapshot(page)).state, "disconnected");
    await page.fill("#password", "mythos"); // the username is still filled in
    await page.click("#login-button");
    await page.waitForFunction(() => window.mythos.state === "connected");
    await waitForLine(page, /^The Lamplit Tavern$/);
  } finally {
    await browser.close();
    await broker.stop();
  }
});

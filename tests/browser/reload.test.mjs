// The web terminal survives a reload (issue 20): logged in with "Stay
// logged in", a reload while events stream lands back in the game without
// the password, resumes right after the last event shown (raw frames from
// there, nothing shown twice) and says how many events came meanwhile.
// Logging out revokes the refresh cookie: it no longer works, and a reload
// shows the login form. The same in SSE mode, and the help list fits a phone.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { artifact, launch, loginAs, newContext, rawFrames, snapshot, type, waitForLine } from "./lib/browser.mjs";
import { publish, startBroker } from "./lib/broker.mjs";
import { assertExactlyOnceInOrder, assertRawExactlyOnceInOrder, fenceCommand, storyNumbers } from "./lib/checks.mjs";
import { startStory, until } from "./lib/story.mjs";

const AWAY = /^while you were away: (\d+) events?$/;

let broker;
let browser;

before(async () => {
  broker = await startBroker();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await broker?.stop();
});

/**
 * Before each page goes away, its record (rendered sequence numbers and
 * lines) is saved in sessionStorage, so the test can compare the pages
 * before and after a reload without racing the stream.
 */
function keepRecordAcrossReloads() {
  window.addEventListener("pagehide", () => {
    const add = (key, items) =>
      sessionStorage.setItem(key, JSON.stringify([...JSON.parse(sessionStorage.getItem(key) ?? "[]"), ...items]));
    add("test.seqs", window.mythos?.seqs ?? []);
    add("test.lines", window.mythos?.lines ?? []);
  });
}

async function earlierPages(page) {
  return page.evaluate(() => ({
    seqs: JSON.parse(sessionStorage.getItem("test.seqs") ?? "[]"),
    lines: JSON.parse(sessionStorage.getItem("test.lines") ?? "[]"),
  }));
}

async function refreshCookie(context) {
  return (await context.cookies()).find((c) => c.name === "mythos-refresh");
}

test("a reload mid-stream resumes after the last event shown, shows nothing twice, and says what came meanwhile", async () => {
  const N = 150;
  const context = await newContext(browser, { viewport: { width: 1000, height: 720 } });
  await context.addInitScript(keepRecordAcrossReloads);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await loginAs(page, broker.url, "alice");
  const story = startStory(broker, { player: "alice", n: N, everyMs: 20 });
  await waitForLine(page, /^Story line 25 of/);

  // Hold the reloaded page's session request (the old page is gone by then)
  // until the stream has moved on by 6 confirmed publishes: at most the one
  // in flight may have reached the old page, so at least 5 came while away.
  await page.route("**/v1/auth/session", async (route) => {
    const gone = story.published;
    await until(() => story.published >= gone + 6, 20000, "6 events published while away");
    await route.continue();
  });
  await page.reload();
  await page.waitForFunction(() => window.mythos.resume === "restored" && window.mythos.state === "connected", null, {
    timeout: 15000,
  });
  await page.unroute("**/v1/auth/session");

  await story.done;
  await waitForLine(page, new RegExp(`^Story line ${N} of ${N}$`), 20000);
  const fence = await fenceCommand(page, type, rawFrames);

  const before = await earlierPages(page);
  const now = await snapshot(page);
  const resumedFrom = await page.evaluate(() => window.mythos.resumedFrom);
  const away = await page.evaluate(() => window.mythos.away);
  // The reloaded page resumed right after the last event the first one showed.
  assert.equal(resumedFrom, before.seqs.at(-1), "resumed from the last event shown");
  // What the broker sent the reloaded page, before any de-duplication: from there, each once.
  assertRawExactlyOnceInOrder(await rawFrames(page), { first: resumedFrom + 1, isFence: (f) => f.command_id === fence });
  // Across both pages: every event shown exactly once, in order, and the whole story.
  assertExactlyOnceInOrder([...before.seqs, ...now.seqs]);
  assert.deepEqual(storyNumbers([...before.lines, ...now.lines]), Array.from({ length: N }, (_, i) => i + 1));
  // The line saying what came meanwhile, once, before the first event of the new page.
  const awayLines = now.lines.filter((l) => AWAY.test(l));
  assert.equal(awayLines.length, 1, JSON.stringify(now.lines.slice(0, 5)));
  assert.equal(Number(awayLines[0].match(AWAY)[1]), away);
  assert.ok(away >= 5, `at least the 5 events published while away (${away})`);
  assert.ok(now.lines.indexOf(awayLines[0]) < now.lines.findIndex((l) => /^Story line/.test(l)));
  assert.equal(before.lines.filter((l) => AWAY.test(l)).length, 0, "a fresh login says nothing about being away");
  // Nothing a script can read holds a secret: no token in storage, the cookie is HttpOnly.
  const storage = await page.evaluate(() => ({ local: localStorage.length, keys: Object.keys(sessionStorage), cookie: document.cookie }));
  assert.equal(storage.local, 0);
  assert.deepEqual(storage.keys.filter((k) => !k.startsWith("test.")).sort(), ["mythos.shown", "mythos.transport"]);
  assert.doesNotMatch(storage.cookie, /mythos-refresh/);
  await page.screenshot({ path: artifact("terminal-after-reload.png") });
  assert.deepEqual(errors, []);
  await context.close();
});

test("logout: the refresh cookie no longer works, and a reload shows the login form", async () => {
  const context = await newContext(browser, { viewport: { width: 1000, height: 720 } });
  const page = await context.newPage();
  await loginAs(page, broker.url, "bob");
  const cookie = await refreshCookie(context);
  assert.ok(cookie, "the refresh cookie is set");
  assert.deepEqual(
    { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite, path: cookie.path },
    { httpOnly: true, secure: true, sameSite: "Strict", path: "/v1/auth" },
  );
  // A reload while logged in goes straight back in.
  await page.reload();
  await page.waitForFunction(() => window.mythos.resume === "restored" && window.mythos.state === "connected", null, {
    timeout: 15000,
  });
  const rotated = await refreshCookie(context);
  assert.notEqual(rotated.value, cookie.value, "the cookie was rotated");

  await page.click("#logout");
  await page.waitForFunction(() => window.mythos.loggedOut === true);
  assert.equal(await refreshCookie(context), undefined, "the cookie is cleared");
  // From the page (no cookie left) and with the last cookie replayed by hand: 401.
  const fromPage = await page.evaluate(async () => (await fetch("/v1/auth/session", { method: "POST" })).status);
  assert.equal(fromPage, 401);
  const replayed = await fetch(`${broker.url}/v1/auth/session`, {
    method: "POST",
    headers: { cookie: `mythos-refresh=${rotated.value}` },
  });
  assert.equal(replayed.status, 401);
  assert.equal((await replayed.json()).error.code, "unauthorized");

  await page.reload();
  await page.waitForFunction(() => window.mythos.resume === "none");
  assert.equal(await page.isVisible("#login-view"), true);
  assert.equal(await page.isVisible("#game-view"), false);
  await context.close();
});

test("SSE mode is chosen on the page, and survives a reload", async () => {
  const context = await newContext(browser, { viewport: { width: 1000, height: 720 } });
  const page = await context.newPage();
  await page.goto(broker.url);
  await page.selectOption("#transport", "sse");
  await loginAs(page, broker.url, "carol", "mythos", { navigate: false });
  assert.equal(await page.evaluate(() => window.mythos.transport), "sse");
  await publish(broker, { to: { player: "carol" }, event_type: "narration", data: { text: "over SSE, one" }, id: "sse-1" });
  await waitForLine(page, /^over SSE, one$/);
  await page.reload();
  await page.waitForFunction(() => window.mythos.resume === "restored" && window.mythos.state === "connected", null, {
    timeout: 15000,
  });
  assert.equal(await page.evaluate(() => window.mythos.transport), "sse");
  assert.equal(await page.inputValue("#transport"), "sse");
  await publish(broker, { to: { player: "carol" }, event_type: "narration", data: { text: "over SSE, two" }, id: "sse-2" });
  await waitForLine(page, /^over SSE, two$/);
  const s = await snapshot(page);
  assert.equal(s.lines.filter((l) => l === "over SSE, one").length, 0, "shown before the reload, not again");
  assertExactlyOnceInOrder(s.seqs);
  assert.equal(s.seqs[0], (await page.evaluate(() => window.mythos.resumedFrom)) + 1);
  await context.close();
});

test("the help list wraps on a phone-sized viewport", async () => {
  const context = await newContext(browser, { viewport: { width: 360, height: 740 } });
  const page = await context.newPage();
  await loginAs(page, broker.url, "alice");
  await type(page, "help");
  await waitForLine(page, /^Commands:/);
  const fit = await page.evaluate(() => {
    const out = document.getElementById("output");
    const help = [...out.querySelectorAll(".line")].find((l) => l.textContent.startsWith("Commands:"));
    return {
      scroll: out.scrollWidth,
      client: out.clientWidth,
      helpRight: help.getBoundingClientRect().right,
      outRight: out.getBoundingClientRect().right,
      page: document.documentElement.scrollWidth,
      viewport: window.innerWidth,
    };
  });
  // Each entry (a command, then what it does) stacks: the description below its command, indented.
  const entries = await page.$$eval("#output .row.entry", (rows) =>
    rows.map((r) => {
      const [t, d] = [r.querySelector(".term").getBoundingClientRect(), r.querySelector(".desc").getBoundingClientRect()];
      return { term: r.querySelector(".term").textContent, below: d.top >= t.bottom - 1, indented: d.left > t.left };
    }),
  );
  assert.equal(entries.length, 5, JSON.stringify(entries));
  for (const e of entries) assert.ok(e.below && e.indented, JSON.stringify(e));
  assert.ok(fit.scroll <= fit.client, `no sideways scrolling in the terminal: ${JSON.stringify(fit)}`);
  assert.ok(fit.helpRight <= fit.outRight, `the help list stays inside: ${JSON.stringify(fit)}`);
  assert.ok(fit.page <= fit.viewport, `the page is no wider than the phone: ${JSON.stringify(fit)}`);
  await page.screenshot({ path: artifact("terminal-help-phone.png") });
  await context.close();
});

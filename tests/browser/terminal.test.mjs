// The web terminal against the demo example (embedded engine): the page
// and its assets, logging in, playing (look, go, say, who, unknown commands,
// history), two players seeing each other, and a screenshot per viewport.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { artifact, launch, loginAs, newContext, rawFrames, snapshot, type, waitForLine } from "./lib/browser.mjs";
import { publish, startBroker } from "./lib/broker.mjs";
import { assertExactlyOnceInOrder, assertRawExactlyOnceInOrder, fenceCommand, responsesById } from "./lib/checks.mjs";

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

test("the broker serves the page and its assets, and a JSON 404 for others", async () => {
  const page = await fetch(`${broker.url}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type"), /^text\/html/);
  assert.match(await page.text(), /\/assets\/terminal\.js/);
  for (const [file, type] of [
    ["terminal.js", /^text\/javascript/],
    ["terminal.css", /^text\/css/],
    ["mythos-client.js", /^text\/javascript/],
  ]) {
    const res = await fetch(`${broker.url}/assets/${file}`);
    assert.equal(res.status, 200, file);
    assert.match(res.headers.get("content-type"), type, file);
  }
  const missing = await fetch(`${broker.url}/assets/nope.js`);
  assert.equal(missing.status, 404);
  const body = await missing.json();
  assert.equal(body.error.code, "not_found");
  assert.equal(typeof body.error.message, "string");
});

test("a wrong password is refused on the login form", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 760 } });
  const page = await context.newPage();
  await page.goto(broker.url);
  await page.fill("#username", "alice");
  await page.fill("#password", "wrong");
  await page.click("#login-button");
  await page.waitForFunction(() => document.getElementById("login-error").textContent !== "");
  assert.match(await page.textContent("#login-error"), /wrong password/);
  assert.equal(await page.isVisible("#game-view"), false);
  await page.screenshot({ path: artifact("login-phone.png") });
  await context.close();
});

test("two players log in, look, move, talk, and see each other", async () => {
  const errors = [];
  const context = await newContext(browser, { viewport: { width: 1000, height: 720 } });
  const alice = await context.newPage();
  alice.on("pageerror", (e) => errors.push(e));
  await loginAs(alice, broker.url, "alice");
  assert.equal(await alice.textContent("#status-label"), "connected");
  await waitForLine(alice, /^The Lamplit Tavern$/);

  const bobContext = await browser.newContext();
  const bob = await bobContext.newPage();
  bob.on("pageerror", (e) => errors.push(e));
  await loginAs(bob, broker.url, "bob");
  await waitForLine(bob, /^Also here: .*alice/);
  await waitForLine(alice, /^bob arrives\.$/);

  await type(alice, "say hi");
  await waitForLine(alice, /^You say: hi$/);
  await waitForLine(bob, /^alice says: hi$/);

  await type(alice, "go north");
  await waitForLine(alice, /^You go north\.$/);
  await waitForLine(alice, /^Independence Square$/);
  await waitForLine(bob, /^alice leaves\.$/);

  await type(alice, "look");
  await type(alice, "who");
  await waitForLine(alice, /^In the world:/);
  await type(alice, "dance");
  await waitForLine(alice, /^Unknown command "dance"/);
  await type(alice, "s");
  await waitForLine(alice, /^You go south\.$/);
  await waitForLine(bob, /^alice arrives\.$/);

  // A room_update from the game server renders like a look.
  await publish(broker, {
    to: { player: "alice" },
    event_type: "room_update",
    data: { room_id: "tavern", name: "The Lamplit Tavern (redecorated)", exits: ["north"], players: [] },
  });
  await waitForLine(alice, /^The Lamplit Tavern \(redecorated\)$/);
  // A game_tick goes to the status line, not the terminal.
  await publish(broker, {
    to: { player: "alice" },
    event_type: "game_tick",
    data: { tick: 99, text: "The fog thins for a moment." },
  });
  await alice.waitForFunction(() => /The fog thins/.test(document.getElementById("statusline").textContent));

  // History: the up arrow brings back the last command, then the one before.
  await alice.press("#command", "ArrowUp");
  assert.equal(await alice.inputValue("#command"), "s");
  await alice.press("#command", "ArrowUp");
  assert.equal(await alice.inputValue("#command"), "dance");
  await alice.press("#command", "ArrowDown");
  await alice.press("#command", "ArrowDown");
  assert.equal(await alice.inputValue("#command"), "");

  const fence = await fenceCommand(alice, type, rawFrames);
  const s = await snapshot(alice);
  assertExactlyOnceInOrder(s.seqs);
  // What the broker sent, before the client's de-duplication: from 1, each once, in order.
  assertRawExactlyOnceInOrder(await rawFrames(alice), { first: 1, isFence: (f) => f.command_id === fence });
  // Every command (the page's own first look and the fence included) got exactly one answer.
  const answers = responsesById(s.events);
  const sent = s.commands.filter((c) => c.status === "accepted");
  assert.equal(sent.length, 8, JSON.stringify(s.commands));
  for (const c of sent) assert.equal(answers.get(c.id), 1, `answers to ${c.input} (${c.id})`);
  // Each rendered event line carries its sequence number.
  const labelled = await alice.$$eval("#output [data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
  assert.ok(labelled.length > 0 && labelled.every((n) => s.seqs.includes(n)));

  await alice.screenshot({ path: artifact("terminal-desktop.png") });
  await alice.setViewportSize({ width: 390, height: 760 });
  await alice.screenshot({ path: artifact("terminal-phone.png") });
  assert.deepEqual(errors, []);
  await bobContext.close();
  await context.close();
});

test("chat published over HTTP shows in the terminal: the README's curl body, and `text` instead of `message`", async () => {
  const context = await newContext(browser, { viewport: { width: 1000, height: 720 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await loginAs(page, broker.url, "carol");
  // The body of the README's `curl` example, to carol instead of alice.
  await publish(broker, {
    to: { player: "carol" },
    event_type: "chat_message",
    data: { channel: "say", from: "gm", message: "hello from curl" },
  });
  await waitForLine(page, /^gm says: hello from curl$/);
  // What a game server might reasonably send instead.
  await publish(broker, { to: { player: "carol" }, event_type: "chat_message", data: { text: "hi", sender: "npc" } });
  await waitForLine(page, /^npc says: hi$/);
  await publish(broker, { to: { player: "carol" }, event_type: "chat_message", data: { text: "anonymous" } });
  await waitForLine(page, /^Someone says: anonymous$/);
  assert.deepEqual(errors, []);
  await context.close();
});

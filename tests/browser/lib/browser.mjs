// Headless Chromium (Debian's, never a downloaded build) and the terminal
// page's moves, for the browser tests.
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { ROOT } from "./broker.mjs";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const ARTIFACTS = path.join(ROOT, "test-artifacts");
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
}

/**
 * Page init script: records every frame the page's WebSockets and
 * EventSources receive, as it arrives and before the client library sees it
 * (so before its de-duplication). `window.__frames` holds, per event frame,
 * {socket, seq, event_type, command_id}; `window.__sockets` every WebSocket.
 */
function recordFrames() {
  window.__frames = [];
  window.__sockets = [];
  const note = (socket, text) => {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    if (f && typeof f.sequence_number === "number") {
      window.__frames.push({
        socket,
        seq: f.sequence_number,
        event_type: f.event_type,
        command_id: f.data?.command_id ?? null,
      });
    }
  };
  const NativeWS = window.WebSocket;
  window.WebSocket = class extends NativeWS {
    constructor(...args) {
      super(...args);
      const socket = window.__sockets.push(this) - 1;
      this.addEventListener("message", (ev) => {
        if (typeof ev.data === "string") {
          const f = JSON.parse(ev.data);
          if (f.type === "event") note(`ws${socket}`, ev.data);
        }
      });
    }
  };
  if (window.EventSource) {
    const NativeES = window.EventSource;
    let n = 0;
    window.EventSource = class extends NativeES {
      constructor(...args) {
        super(...args);
        const socket = `sse${n++}`;
        this.addEventListener("message", (ev) => note(socket, ev.data));
      }
    };
  }
}

/** A new context (options as for browser.newContext) whose pages record raw frames. */
export async function newContext(browser, options = {}) {
  const context = await browser.newContext(options);
  await context.addInitScript(recordFrames);
  return context;
}

/** The raw event frames the page received, in arrival order. */
export function rawFrames(page) {
  return page.evaluate(() => window.__frames.map((f) => ({ ...f })));
}

/** Where screenshots go (git-ignored). */
export function artifact(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, name);
}

/**
 * Opens the terminal (unless `navigate` is false: the page is open), logs in
 * ("Stay logged in" is ticked by default), and waits until connected with the
 * start room shown (the page sends `look` once connected).
 */
export async function loginAs(page, url, username, password = "mythos", { navigate = true } = {}) {
  if (navigate) await page.goto(url);
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#login-button");
  await page.waitForFunction(() => window.mythos.state === "connected", null, { timeout: 15000 });
  await waitForLine(page, /^Exits: /);
}

/** Types a line into the command input and presses Enter. */
export async function type(page, text) {
  await page.fill("#command", text);
  await page.press("#command", "Enter");
}

/** Waits until some terminal line matches `re`. */
export async function waitForLine(page, re, timeout = 15000) {
  await page.waitForFunction(
    ([source, flags]) => window.mythos.lines.some((l) => new RegExp(source, flags).test(l)),
    [re.source, re.flags],
    { timeout },
  );
}

/** The page's record of what it rendered. */
export function snapshot(page) {
  return page.evaluate(() => ({
    state: window.mythos.state,
    seqs: [...window.mythos.seqs],
    events: window.mythos.events.map((e) => ({ ...e })),
    lines: [...window.mythos.lines],
    commands: window.mythos.commands.map((c) => ({ ...c })),
    resyncs: [...window.mythos.resyncs],
  }));
}

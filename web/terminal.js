// The MythosMUD web terminal: log in, connect with the client library, show
// each event by its type, send what the player types as commands.
//
// The client library (@mythos/client, served as /assets/mythos-client.js)
// delivers events in sequence order, exactly once, across reconnects, and
// queues commands typed while offline; this page only renders and types.
//
// For tests and the curious, `window.mythos` holds what was rendered:
//   state     the connection state: connecting | connected | reconnecting | disconnected
//   player    the logged-in player id
//   events    [{seq, type, commandId}] for every event, in delivery order
//   seqs      the events' sequence numbers alone
//   resyncs   oldest_available of every resync_required notice (a marker, not an event)
//   lines     the text of every terminal line
//   commands  [{input, id, status}] for everything sent (id once the broker accepted it)
//   resume    whether this page load found a session to resume: pending | restored | none
//   resumedFrom  the last sequence number shown before the reload (null: unknown)
//   away      how many events the "while you were away" line counted (null: none shown)
//   transport ws | sse
//   loggedOut true once the Log out button's request was answered
// and every line rendered from an event carries data-seq and data-type.
//
// Staying logged in: with "Stay logged in" ticked, the broker sets an
// HttpOnly refresh cookie (scripts cannot read it); a reload trades it for a
// fresh access token (POST /v1/auth/session). The access token lives only in
// this page's memory. sessionStorage holds two non-secrets: the last sequence
// number shown (so a reload resumes right after it and shows nothing twice)
// and the chosen transport.

import { login, logout, MythosClient, refreshAccessToken, resumeSession } from "/assets/mythos-client.js";

const MAX_LINES = 5000; // terminal lines kept on the page
const MAX_KEPT = 50000; // entries kept in each window.mythos list
const MAX_HISTORY = 100;
const PROBE_MS = 10000; // while reconnecting, check this often that the session is still valid
const PLACEHOLDER_ONLINE = "type a command, or help";
const PLACEHOLDER_OFFLINE = "offline: commands are sent once reconnected";
const SHOWN_KEY = "mythos.shown"; // sessionStorage: {player, seq} of the last event shown
const TRANSPORT_KEY = "mythos.transport"; // sessionStorage: "ws" | "sse"

const $ = (id) => document.getElementById(id);
const ui = {
  loginView: $("login-view"),
  loginForm: $("login-form"),
  username: $("username"),
  password: $("password"),
  loginButton: $("login-button"),
  remember: $("remember"),
  transport: $("transport"),
  loginError: $("login-error"),
  gameView: $("game-view"),
  output: $("output"),
  statusline: $("statusline"),
  commandForm: $("command-form"),
  command: $("command"),
  player: $("player"),
  status: $("status"),
  statusLabel: $("status-label"),
  logout: $("logout"),
};

const mythos = {
  state: "disconnected",
  player: null,
  events: [],
  seqs: [],
  resyncs: [],
  lines: [],
  commands: [],
  client: null,
  resume: "pending",
  resumedFrom: null,
  away: null,
  transport: "ws",
  loggedOut: false,
};
window.mythos = mythos;

/** sessionStorage, which may be unavailable (then nothing is remembered). */
function stored(key) {
  try {
    return JSON.parse(sessionStorage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

function store(key, value) {
  try {
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, JSON.stringify(value));
  } catch {
    /* storage disabled: a reload then resumes from the broker's cursor */
  }
}

function keep(list, item) {
  list.push(item);
  if (list.length > MAX_KEPT) list.splice(0, list.length - MAX_KEPT);
}

// ---------------------------------------------------------------------------
// Terminal output
// ---------------------------------------------------------------------------

function nearBottom() {
  const o = ui.output;
  return o.scrollHeight - o.scrollTop - o.clientHeight < 48;
}

// Keep following the newest line across resizes (a phone turning, a keyboard
// opening) unless the player scrolled up to read.
let following = true;
ui.output.addEventListener("scroll", () => (following = nearBottom()));
window.addEventListener("resize", () => {
  if (following) ui.output.scrollTop = ui.output.scrollHeight;
});

/** Appends one line; `ev` (an event envelope) labels it with its sequence number. */
function addLine(text, kind, ev) {
  const stick = nearBottom();
  const div = document.createElement("div");
  div.className = `line ${kind}`;
  if (kind === "response" && text.includes("\n")) rows(div, text);
  else div.textContent = text;
  if (ev) {
    div.dataset.seq = String(ev.sequence_number);
    div.dataset.type = ev.event_type;
  }
  ui.output.append(div);
  while (ui.output.childElementCount > MAX_LINES) ui.output.firstElementChild.remove();
  keep(mythos.lines, text);
  if (stick) ui.output.scrollTop = ui.output.scrollHeight;
  return div;
}

/**
 * A text of several lines (the demo's help list) as rows; an indented row of
 * a term and its description (two spaces or more between them) as an entry
 * the stylesheet lays out in two columns, or stacked on a phone.
 */
function rows(div, text) {
  for (const line of text.split("\n")) {
    const row = document.createElement("div");
    row.className = "row";
    const m = line.match(/^\s+(\S.*?)\s{2,}(\S.*)$/);
    if (m) {
      row.classList.add("entry");
      const term = document.createElement("span");
      term.className = "term";
      term.textContent = m[1];
      const desc = document.createElement("span");
      desc.className = "desc";
      desc.textContent = m[2];
      row.append(term, desc);
    } else {
      row.textContent = line;
    }
    div.append(row);
  }
}

function showRoom(room, ev) {
  addLine(room.name ?? room.room_id ?? "Somewhere", "room-name", ev);
  if (room.description) addLine(room.description, "room-description", ev);
  const exits = Array.isArray(room.exits) ? room.exits : [];
  addLine(`Exits: ${exits.length ? exits.join(", ") : "none"}`, "room-exits", ev);
  const players = Array.isArray(room.players) ? room.players : [];
  if (players.length) addLine(`Also here: ${players.join(", ")}`, "room-players", ev);
}

/** How each event type looks; anything else shows its `data.text` or its JSON. */
const RENDER = {
  command_response(d, ev) {
    if (d.text) addLine(d.text, d.ok === false ? "error" : "response", ev);
    if (d.room) showRoom(d.room, ev);
  },
  room_update(d, ev) {
    showRoom(d, ev);
  },
  chat_message(d, ev) {
    // The demo sends {from, message}; a game server may reasonably name them
    // otherwise (`text`, `sender`, `player_id`), or send a bare string.
    const body = typeof d === "string" ? { message: d } : d ?? {};
    const from = body.from ?? body.sender ?? body.player_id ?? body.player;
    const said = body.message ?? body.text ?? body.body ?? "";
    const who = from === mythos.player ? "You" : from ?? "Someone";
    const says = who === "You" ? "say" : "says";
    const text = !body.channel || body.channel === "say"
      ? `${who} ${says}: ${said}`
      : `[${body.channel}] ${who}: ${said}`;
    addLine(text, "chat", ev);
  },
  player_entered(d, ev) {
    addLine(`${d.player_id ?? "Someone"} arrives.`, "movement", ev);
  },
  player_left(d, ev) {
    addLine(`${d.player_id ?? "Someone"} leaves.`, "movement", ev);
  },
  game_tick(d, ev) {
    const time = new Date(ev.timestamp).toLocaleTimeString();
    ui.statusline.textContent = `${time} · ${d.text ?? `tick ${d.tick ?? ""}`}`;
    ui.statusline.dataset.seq = String(ev.sequence_number);
  },
};

function renderOther(d, ev) {
  const text = typeof d?.text === "string" ? d.text : `[${ev.event_type}] ${JSON.stringify(d)}`;
  addLine(text, "event", ev);
}

function onEvent(ev) {
  keep(mythos.seqs, ev.sequence_number);
  keep(mythos.events, {
    seq: ev.sequence_number,
    type: ev.event_type,
    commandId: ev.data?.command_id ?? null,
  });
  const data = ev.data && typeof ev.data === "object" ? ev.data : {};
  (RENDER[ev.event_type] ?? renderOther)(data, ev);
  store(SHOWN_KEY, { player: mythos.player, seq: ev.sequence_number });
}

function onResync({ oldestAvailable }) {
  keep(mythos.resyncs, oldestAvailable);
  addLine(
    `Some older messages were no longer kept by the server; the story continues from #${oldestAvailable}.`,
    "notice",
  );
}

// ---------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------

function setState(state, previous) {
  mythos.state = state;
  document.body.dataset.state = state;
  ui.status.dataset.state = state;
  ui.statusLabel.textContent = state;
  ui.command.placeholder = state === "connected" ? PLACEHOLDER_ONLINE : PLACEHOLDER_OFFLINE;
  if (state === "reconnecting" && previous === "connected") {
    addLine("Connection lost; reconnecting…", "notice");
  } else if (state === "connected" && previous === "reconnecting") {
    addLine("Reconnected.", "notice");
  }
}

// A WebSocket refused with 401 looks like any network failure to a page, so
// the client would retry forever after the server forgot the session (an
// embedded-engine broker restarted with a new secret). While reconnecting,
// ask the server now and then whether the token is still good.
let probe = null;

function watchSession(state) {
  clearInterval(probe);
  probe = null;
  if (state !== "reconnecting") return;
  probe = setInterval(async () => {
    const client = mythos.client;
    if (!client) return;
    try {
      client.setToken((await refreshAccessToken(location.origin, client.token)).access_token);
    } catch (err) {
      if (err.status === 401) recover("The server no longer knows your session (did it restart?); please log in again.");
    }
  }, PROBE_MS);
}

function onError(err) {
  if (err.status === 401 || err.status === 403 || err.code === "max_attempts") {
    recover("Your session has ended; please log in again.");
  } else {
    console.warn("mythos:", err.code, err.message);
  }
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/** What a typed line asks for: `{chat}`, `{command, args}` or `{error}`. */
function parseInput(text) {
  if (text.startsWith("'")) return chat(text.slice(1));
  const [word, ...args] = text.split(/\s+/);
  const command = word.toLowerCase();
  if (command === "say") return chat(text.slice(word.length));
  if (!/^[a-z_]{1,64}$/.test(command)) {
    return { error: `"${word}" is not a command. Commands are words: look, go north, say hello, help.` };
  }
  if (args.length > 16) return { error: "A command takes at most 16 words." };
  return { command, args };
}

function chat(message) {
  const m = message.trim();
  return m ? { chat: m } : { command: "say", args: [] };
}

function explain(err) {
  if (err.code === "rate_limited") return "Too fast: wait a moment, then try again.";
  return `Not sent: ${err.message}`;
}

/** Sends a parsed line; `echo` is its line in the terminal, if shown. */
function send(parsed, input, echo) {
  const client = mythos.client;
  if (!client) return;
  const entry = { input, id: null, status: client.state === "connected" ? "sent" : "queued" };
  keep(mythos.commands, entry);
  if (echo && entry.status === "queued") echo.classList.add("queued");
  const sent = "chat" in parsed ? client.say("say", parsed.chat) : client.sendCommand(parsed.command, parsed.args);
  sent.then(
    (id) => {
      entry.id = id;
      entry.status = "accepted";
      if (echo) {
        echo.classList.remove("queued");
        echo.dataset.commandId = id;
      }
    },
    (err) => {
      entry.status = "failed";
      entry.error = err.code;
      echo?.classList.remove("queued");
      echo?.classList.add("failed");
      if (err.code !== "closed") addLine(explain(err), "error");
    },
  );
}

const history = { items: [], at: 0, draft: "" };

function onSubmit(event) {
  event.preventDefault();
  const text = ui.command.value.trim();
  ui.command.value = "";
  if (!text) return;
  if (history.items[history.items.length - 1] !== text) history.items.push(text);
  if (history.items.length > MAX_HISTORY) history.items.shift();
  history.at = history.items.length;
  history.draft = "";
  const echo = addLine(`> ${text}`, "echo");
  const parsed = parseInput(text);
  if (parsed.error) {
    addLine(parsed.error, "error");
    return;
  }
  send(parsed, text, echo);
}

function onKey(event) {
  const h = history;
  if (event.key === "ArrowUp" && h.at > 0) {
    if (h.at === h.items.length) h.draft = ui.command.value;
    h.at -= 1;
  } else if (event.key === "ArrowDown" && h.at < h.items.length) {
    h.at += 1;
  } else {
    return;
  }
  event.preventDefault();
  ui.command.value = h.at === h.items.length ? h.draft : h.items[h.at];
  const end = ui.command.value.length;
  ui.command.setSelectionRange(end, end);
}

// ---------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------

async function onLogin(event) {
  event.preventDefault();
  ui.loginError.textContent = "";
  ui.loginButton.disabled = true;
  try {
    const t = await login(location.origin, ui.username.value.trim(), ui.password.value, {
      remember: ui.remember.checked,
    });
    ui.password.value = "";
    store(TRANSPORT_KEY, ui.transport.value === "sse" ? "sse" : "ws");
    store(SHOWN_KEY, null);
    await startSession(t);
  } catch (err) {
    ui.loginError.textContent =
      err.code === "invalid_credentials" ? "Unknown user or wrong password."
      : err.code === "network_error" ? "Cannot reach the server; is it running?"
      : err.message;
  } finally {
    ui.loginButton.disabled = false;
  }
}

/**
 * Opens the game for token body `t`. `restored`: after a reload, from the
 * refresh cookie: resume right after the last event shown, and say first how
 * many events came meanwhile.
 */
async function startSession(t, { restored = false } = {}) {
  mythos.player = t.player_id;
  mythos.loggedOut = false;
  ui.player.textContent = t.player_id;
  ui.output.replaceChildren();
  ui.statusline.textContent = "The world is quiet, for now.";
  ui.loginView.hidden = true;
  ui.gameView.hidden = false;
  ui.logout.hidden = false;

  const transport = stored(TRANSPORT_KEY) === "sse" ? "sse" : "ws";
  mythos.transport = transport;
  const shown = stored(SHOWN_KEY);
  const since =
    restored && shown?.player === t.player_id && Number.isSafeInteger(shown.seq) && shown.seq >= 0
      ? shown.seq
      : undefined;
  mythos.resumedFrom = since ?? null;
  mythos.client?.close();
  const client = new MythosClient({
    baseUrl: location.origin,
    token: t.access_token,
    transport,
    since,
    // A person is waiting at the keyboard: retry sooner than the library's 30 s cap.
    reconnect: { initialDelayMs: 500, maxDelayMs: 5000 },
  });
  mythos.client = client;
  const mine = (fn) => (...args) => {
    if (mythos.client === client) fn(...args);
  };
  let looked = false;
  client.on("state", mine((state, previous) => {
    setState(state, previous);
    watchSession(state);
    if (state === "connected" && !looked) {
      looked = true; // the game shows the room, placing a new player in the world
      send({ command: "look", args: [] }, "look", null);
    }
  }));
  client.on("event", mine(onEvent));
  client.on("resync", mine(onResync));
  client.on("error", mine(onError));
  addLine(restored ? `Welcome back, ${t.player_id}.` : `Welcome, ${t.player_id}.`, "notice");
  if (restored) await showAway(t.access_token, since);
  if (mythos.client !== client) return;
  client.connect();
  ui.command.focus();
}

/** The "while you were away" line: events appended after the last one shown (else after the acked cursor). */
async function showAway(token, since) {
  try {
    const res = await fetch("/v1/cursor", { headers: { Authorization: `Bearer ${token}` } });
    if (!res.ok) return;
    const c = await res.json();
    const n = Math.max(0, c.last_sequence_number - (since ?? c.acked));
    mythos.away = n;
    addLine(`while you were away: ${n} event${n === 1 ? "" : "s"}`, "notice away");
  } catch (err) {
    console.warn("mythos: no cursor", err);
  }
}

/** A session ended by the broker: the refresh cookie may still start a new one. */
let lastRecovery = 0;
async function recover(message) {
  const now = Date.now();
  if (now - lastRecovery > 30000) {
    lastRecovery = now;
    try {
      const t = await resumeSession(location.origin);
      await startSession(t, { restored: true });
      return;
    } catch {
      /* no cookie, or it no longer works */
    }
  }
  endSession(message);
}

/** On a fresh page: back into the game if the refresh cookie still works, else the login form. */
async function boot() {
  ui.transport.value = stored(TRANSPORT_KEY) === "sse" ? "sse" : "ws";
  ui.loginView.hidden = true; // no flash of the form while asking
  try {
    const t = await resumeSession(location.origin);
    mythos.resume = "restored";
    await startSession(t, { restored: true });
  } catch {
    mythos.resume = "none";
    ui.loginView.hidden = false;
    ui.username.focus();
  }
}

async function onLogout() {
  const token = mythos.client?.token;
  store(SHOWN_KEY, null);
  try {
    await logout(location.origin, token);
  } catch (err) {
    console.warn("mythos: logout", err.code, err.message);
  }
  endSession("");
  mythos.loggedOut = true;
}

function endSession(message) {
  mythos.client?.close();
  mythos.client = null;
  watchSession("disconnected");
  setState("disconnected");
  ui.gameView.hidden = true;
  ui.logout.hidden = true;
  ui.loginView.hidden = false;
  ui.player.textContent = "";
  ui.loginError.textContent = message;
  ui.username.focus();
}

ui.loginForm.addEventListener("submit", onLogin);
ui.commandForm.addEventListener("submit", onSubmit);
ui.command.addEventListener("keydown", onKey);
ui.logout.addEventListener("click", onLogout);
// A tab put away (or killed) acknowledges what it showed.
window.addEventListener("pagehide", () => mythos.client?.flushAck());
setState("disconnected");
boot();

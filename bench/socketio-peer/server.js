// The Socket.IO peer of `bench-delivery --peer socketio` (docs/benchmarks.md):
// one node process, the websocket transport, connection-state recovery, and
// the Redis streams adapter on the Redis the benchmark started for it.
//
// Environment: PORT (required), REDIS_URL (required; never the machine's own
// Redis: the benchmark starts one on a free port).
//
// - A client joins the room named in its handshake's auth: `40{"room":"r1"}`.
// - `POST /publish {"room":"r1","data":{...}}` calls
//   `io.to(room).emit("bench", data)` and answers `{"members":N}`, the
//   room's local size (the deliveries this emit makes). The answer is written
//   once emit() returned: the adapter's XADD is then under way, not done.
// - `GET /stats` answers `{"clients":N,"memory":process.memoryUsage()}`.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

const port = Number(process.env.PORT);
const redisUrl = process.env.REDIS_URL;
if (!port || !redisUrl) {
  console.error("server.js: set PORT and REDIS_URL");
  process.exit(2);
}

/** Reads a request body (small JSON) and calls `done(text)`. */
function readBody(req, done) {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => done(Buffer.concat(chunks).toString("utf8")));
}

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

/** `POST /publish`: one room event, emitted to the room. */
function publish(io, req, res) {
  readBody(req, (text) => {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      return answer(res, 400, { error: "body is not JSON" });
    }
    if (typeof msg.room !== "string" || msg.data === undefined) {
      return answer(res, 400, { error: "want {room, data}" });
    }
    io.to(msg.room).emit("bench", msg.data);
    const members = io.of("/").adapter.rooms.get(msg.room);
    answer(res, 200, { members: members ? members.size : 0 });
  });
}

async function main() {
  const redis = createClient({ url: redisUrl });
  redis.on("error", (e) => console.error("redis:", e.message));
  await redis.connect();

  const server = http.createServer((req, res) => {
    if (req.method === "POST" && req.url === "/publish") {
      return publish(io, req, res);
    }
    if (req.method === "GET" && req.url === "/stats") {
      return answer(res, 200, {
        clients: io.engine.clientsCount,
        memory: process.memoryUsage(),
      });
    }
    answer(res, 404, { error: "not found" });
  });
  // The publishers keep their connections for the whole run.
  server.keepAliveTimeout = 10 * 60 * 1000;

  const io = new Server(server, {
    transports: ["websocket"],
    connectionStateRecovery: {
      maxDisconnectionDuration: 2 * 60 * 1000,
      skipMiddlewares: true,
    },
    adapter: createAdapter(redis),
  });
  io.on("connection", (socket) => {
    const room = socket.handshake.auth && socket.handshake.auth.room;
    if (typeof room === "string" && room.length > 0) {
      socket.join(room);
    }
  });

  server.listen(port, "127.0.0.1", () => {
    console.log(`socketio-peer listening on 127.0.0.1:${port}`);
  });
}

main().catch((e) => {
  console.error("server.js:", e);
  process.exit(1);
});

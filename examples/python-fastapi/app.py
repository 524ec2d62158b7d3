"""An echo/chat world: a tiny game server on FastAPI using the ``mythos_broker`` library.

Players connect to the broker (WebSocket or SSE), never to this server. What they
type arrives in the broker's command stream; this server reads it with a consumer
group and answers through the broker's HTTP API:

- every player starts in the room ``lobby`` (joined on their first message);
- ``{"type":"chat","channel":"say","message":"hi"}`` or the command ``say hi``:
  a ``chat_message`` ``{"from","message"}`` to everyone in the player's room;
- ``go <room>``: leave the room, join another (the broker tells the rooms);
- ``look``: a ``command_response`` listing the room's members;
- ``who``: a ``command_response`` listing them with their presence
  (``alice (online), bob (linkdead)``), read from the broker (``room_presence``);
- anything else: a ``command_response`` echoing it.

Every command also gets a ``command_response`` carrying the command's ``id``. Each
event's publish ``id`` comes from the command's stream entry
(:meth:`Command.publish_id`), so an entry handled twice (a claim after a crash) is
delivered once.

Run it (a broker on Redis must be running; see README.md):

    MYTHOS_BROKER_URL=http://127.0.0.1:54731 MYTHOS_REDIS_URL=redis://127.0.0.1:6379 \\
    MYTHOS_JWT_SECRET=... uvicorn app:app --port 8000
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from fastapi import FastAPI

from mythos_broker import AsyncBrokerClient, AsyncCommandConsumer, Command, mint_token

LOBBY = "lobby"


class World:
    def __init__(self, broker: AsyncBrokerClient) -> None:
        self.broker = broker
        self.rooms: dict[str, str] = {}  # player -> room
        self.handled = 0

    async def room_of(self, player: str) -> str:
        room = self.rooms.get(player)
        if room is None:
            await self.broker.join(LOBBY, player)
            room = self.rooms[player] = LOBBY
        return room

    async def reply(self, cmd: Command, text: str, n: int = 0) -> None:
        await self.broker.publish_to_player(
            cmd.player_id,
            "command_response",
            {"command_id": cmd.id, "text": text},
            id=cmd.publish_id(f"r{n}"),
        )

    async def say(self, cmd: Command, room: str, message: str) -> None:
        await self.broker.publish_to_room(
            room,
            "chat_message",
            {"channel": "say", "from": cmd.player_id, "message": message},
            id=cmd.publish_id("say"),
        )

    async def handle(self, cmd: Command) -> None:
        room = await self.room_of(cmd.player_id)
        if cmd.type == "chat":
            await self.say(cmd, room, cmd.message or "")
            await self.reply(cmd, "said")
        elif cmd.command == "say":
            await self.say(cmd, room, " ".join(cmd.args))
            await self.reply(cmd, "said")
        elif cmd.command == "go" and cmd.args:
            target = cmd.args[0]
            await self.broker.leave(room, cmd.player_id)
            await self.broker.join(target, cmd.player_id)
            self.rooms[cmd.player_id] = target
            await self.reply(cmd, f"you are in {target}")
        elif cmd.command == "look":
            members = await self.broker.members(room)
            await self.reply(cmd, f"{room}: {', '.join(members)}")
        elif cmd.command == "who":
            who = await self.broker.room_presence(room)
            listed = ", ".join(f"{p.player_id} ({p.state})" for p in who.players)
            await self.reply(cmd, f"{room}: {listed}")
        else:
            await self.reply(cmd, f"echo: {cmd.command} {' '.join(cmd.args)}".rstrip())
        self.handled += 1


def _service_token() -> str:
    token = os.environ.get("MYTHOS_SERVICE_TOKEN")
    if token:
        return token
    secret = os.environ.get("MYTHOS_JWT_SECRET")
    if not secret:
        raise RuntimeError("set MYTHOS_SERVICE_TOKEN, or MYTHOS_JWT_SECRET to mint one")
    return mint_token(secret, "echo-world", "service", ttl=24 * 3600)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    broker = AsyncBrokerClient(
        os.environ.get("MYTHOS_BROKER_URL", "http://127.0.0.1:54731"), _service_token()
    )
    r = redis.asyncio.Redis.from_url(os.environ.get("MYTHOS_REDIS_URL", "redis://127.0.0.1:6379"))
    world = World(broker)
    consumer = AsyncCommandConsumer(
        r,
        group="echo-world",
        consumer=f"{socket.gethostname()}-{os.getpid()}",
        partitions=int(os.environ.get("MYTHOS_COMMAND_PARTITIONS", "1")),
        claim_idle=float(os.environ.get("ECHO_CLAIM_IDLE", "30")),
    )
    task = asyncio.create_task(consumer.run(world.handle))
    app.state.world = world
    try:
        yield
    finally:
        consumer.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.aclose()
        await r.aclose()


app = FastAPI(title="echo world", lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    world: World = app.state.world
    return {"ok": True, "handled": world.handled}


@app.get("/rooms/{room}")
async def room(room: str) -> dict[str, Any]:
    world: World = app.state.world
    return {"room": room, "members": await world.broker.members(room)}


@app.get("/rooms/{room}/who")
async def who(room: str) -> dict[str, Any]:
    world: World = app.state.world
    r = await world.broker.room_presence(room)
    return {"room": room, "online": r.online,
            "players": {p.player_id: p.state for p in r.players}}

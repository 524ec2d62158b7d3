"""Player commands: sent over a real WebSocket, appended by the real broker to Redis,
consumed with this library's consumer group."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio

from mythos_broker import AsyncCommandConsumer, Command, CommandConsumer, partition_names, partition_of
from mythos_broker.pytest_plugin import BrokerFactory
from mythos_broker.testing import BrokerProcess, RedisServer


def _collect(consumer: CommandConsumer, n: int, timeout: float = 10.0) -> list[Command]:
    got: list[Command] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        consumer.poll(got.append)
    return got


def test_a_command_is_consumed_and_acked(
    mythos_broker_redis: BrokerProcess, mythos_redis: RedisServer, ws_player: Any
) -> None:
    r = mythos_redis.client()
    consumer = CommandConsumer(r, "game", "c1", block=0.2)
    consumer.setup()
    p = ws_player(mythos_broker_redis.ws_url, mythos_broker_redis.token("alice"))
    p.command("look", "north", id="cmd-1")
    p.chat("hello")
    got = _collect(consumer, 2)
    assert [(c.player_id, c.type, c.id) for c in got] == [("alice", "command", "cmd-1"), ("alice", "chat", "m2")]
    assert (got[0].command, got[0].args, got[0].deliveries) == ("look", ["north"], 1)
    assert (got[1].channel, got[1].message) == ("say", "hello")
    assert got[0].session_id == p.welcome["session_id"]
    assert r.xpending("mythos:commands", "game")["pending"] == 0  # acked


def test_a_stale_entry_is_claimed_by_another_consumer(
    mythos_broker_redis: BrokerProcess, mythos_redis: RedisServer, ws_player: Any
) -> None:
    r = mythos_redis.client()
    crashed = CommandConsumer(r, "game", "crashed", block=0.2, claim_idle=0.3)
    crashed.setup()
    p = ws_player(mythos_broker_redis.ws_url, mythos_broker_redis.token("alice"))
    p.command("take", "sword")

    def die(cmd: Command) -> None:
        raise RuntimeError("the game server crashed mid-command")

    assert crashed.poll(die) == 0
    assert r.xpending("mythos:commands", "game")["pending"] == 1
    rescuer = CommandConsumer(r, "game", "rescuer", block=0.2, claim_idle=0.3)
    assert rescuer.poll(lambda c: None, block=False) == 0  # not stale yet
    time.sleep(0.4)
    got: list[Command] = []
    rescuer.poll(got.append, block=False)
    assert [(c.command, c.args, c.deliveries) for c in got] == [("take", ["sword"], 2)]
    assert r.xpending("mythos:commands", "game")["pending"] == 0


def test_dead_letter_after_n_deliveries(
    mythos_broker_redis: BrokerProcess, mythos_redis: RedisServer, ws_player: Any
) -> None:
    r = mythos_redis.client(decode_responses=True)
    consumer = CommandConsumer(r, "game", "c1", block=0.1, claim_idle=0.05, max_deliveries=3)
    consumer.setup()
    p = ws_player(mythos_broker_redis.ws_url, mythos_broker_redis.token("alice"))
    p.command("poison")
    p.command("fine")
    tries: list[int] = []
    handled: list[str] = []

    def handler(cmd: Command) -> None:
        if cmd.command == "poison":
            tries.append(cmd.deliveries)
            raise ValueError("cannot handle this one")
        handled.append(cmd.id)

    deadline = time.monotonic() + 10
    while not consumer.dead_letters and time.monotonic() < deadline:
        consumer.poll(handler)
        time.sleep(0.06)
    assert tries == [1, 2, 3] and handled == ["c2"]
    [dead] = consumer.dead_letters
    assert dead.stream == "mythos:commands" and "3 times" in dead.reason
    [(dead_id, fields)] = r.xrange("mythos:commands:dead")
    assert fields["entry_id"] == dead.entry_id and fields["deliveries"] == "3"
    assert fields["player_id"] == "alice" and fields["group"] == "game"
    assert '"poison"' in fields["payload"]
    assert r.xpending("mythos:commands", "game")["pending"] == 0


def test_a_resend_is_recognised_and_not_handled_twice(
    mythos_broker_redis: BrokerProcess, mythos_redis: RedisServer, ws_player: Any
) -> None:
    r = mythos_redis.client()
    consumer = CommandConsumer(r, "game", "c1", block=0.2)
    consumer.setup()
    token = mythos_broker_redis.token("alice")
    first = ws_player(mythos_broker_redis.ws_url, token)
    first.command("buy", "lamp", id="k1")
    first.close()
    # the client never saw command_accepted (say), reconnects and resends it
    second = ws_player(mythos_broker_redis.ws_url, token)
    second.command("buy", "lamp", id="k1")
    second.command("buy", "rope", id="k1")  # the same id reused for another message
    handled: list[Command] = []
    acked = 0
    deadline = time.monotonic() + 10
    while acked < 3 and time.monotonic() < deadline:
        acked += consumer.poll(handled.append)
    assert [c.args for c in handled] == [["lamp"], ["rope"]]
    assert r.xlen("mythos:commands") == 3 and r.xpending("mythos:commands", "game")["pending"] == 0


def test_every_partition_is_read(mythos_broker_factory: BrokerFactory, ws_player: Any) -> None:
    redis_server = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=redis_server, env={"MYTHOS_COMMAND_PARTITIONS": "4"})
    r = redis_server.client(decode_responses=True)
    consumer = CommandConsumer(r, "game", "c1", partitions=4, block=0.2)
    consumer.setup()
    players = ["alice", "bob", "carol", "dave", "erin", "frank"]
    for name in players:
        ws_player(b.ws_url, b.token(name)).command("hello")
    got = _collect(consumer, len(players))
    names = partition_names(4)
    assert sorted(c.player_id for c in got) == sorted(players)
    for c in got:
        assert c.stream == names[partition_of(c.player_id, 4)]
    assert len({c.stream for c in got}) > 1
    assert all(r.xlen(s) == sum(partition_of(p, 4) == i for p in players) for i, s in enumerate(names))


def test_async_consumer(mythos_broker_redis: BrokerProcess, mythos_redis: RedisServer, ws_player: Any) -> None:
    p = ws_player(mythos_broker_redis.ws_url, mythos_broker_redis.token("alice"))

    async def go() -> list[str]:
        r = redis.asyncio.Redis(port=mythos_redis.port)
        consumer = AsyncCommandConsumer(r, "game", "a1", block=0.2)
        got: list[str] = []

        async def handler(cmd: Command) -> None:
            got.append(cmd.command or "")
            if len(got) == 2:
                consumer.stop()

        await asyncio.get_running_loop().run_in_executor(None, lambda: p.command("one"))
        runner = asyncio.create_task(consumer.run(handler))
        await asyncio.get_running_loop().run_in_executor(None, lambda: p.command("two"))
        await asyncio.wait_for(runner, 10)
        pending = await r.xpending("mythos:commands", "game")
        await r.aclose()
        assert pending["pending"] == 0
        return got

    assert asyncio.run(go()) == ["one", "two"]

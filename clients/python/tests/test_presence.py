"""Presence: players connect to the real broker over WebSockets; the game server reads
their presence over HTTP and follows the `mythos:presence` stream in Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio
from websockets.exceptions import ConnectionClosed

from conftest import eventually
from mythos_broker import (
    AsyncPresenceFeed,
    BadRequest,
    BrokerError,
    Forbidden,
    PresenceFact,
    PresenceFeed,
    RetryPolicy,
    _core,
    partition_of,
    presence_partition_names,
)
from mythos_broker.pytest_plugin import BrokerFactory
from mythos_broker.testing import BrokerProcess, RedisServer

NOW = {"MYTHOS_PRESENCE_GRACE": "0s"}  # the last disconnect is offline at once
ONCE = RetryPolicy(attempts=1)


def _bye(p: Any) -> None:
    """A clean logout: the broker closes the connection 1000 "bye"."""
    p.ws.send(json.dumps({"type": "bye"}))
    with pytest.raises(ConnectionClosed) as e:
        while True:
            p.ws.recv(timeout=10)
    assert e.value.rcvd is not None and (e.value.rcvd.code, e.value.rcvd.reason) == (1000, "bye")


def test_a_player_goes_online_then_offline_by_timeout(
    mythos_broker_factory: BrokerFactory, ws_player: Any
) -> None:
    b = mythos_broker_factory.start(env=NOW)
    with b.client() as c:
        never = c.presence("alice")
        assert (never.state, never.seq, never.since_ms, never.until_ms, never.nodes) == (
            "offline", 0, 0, None, ())
        p = ws_player(b.ws_url, b.token("alice"))
        eventually(lambda: c.presence("alice").online, what="alice online")
        on = c.presence("alice")
        assert on.seq == 1 and len(on.nodes) == 1 and on.since_ms > 0 and on.until_ms is None
        [fact] = c.presence_facts().facts
        assert (fact.player_id, fact.seq, fact.state, fact.reason) == ("alice", 1, "online", "connect")
        assert fact.node == on.nodes[0] and fact.at_ms == on.since_ms
        p.close()
        eventually(lambda: c.presence("alice").state == "offline", what="alice offline")
        assert c.presence("alice").seq == 2
        page = c.presence_facts(after=fact.entry_id)
        [off] = page.facts
        assert (off.seq, off.state, off.reason) == (2, "offline", "timeout")
        assert (page.partition, page.partitions, page.resume) == (0, 1, off.entry_id)
        assert c.presence_facts(after=off.entry_id).facts == ()


def test_bye_is_a_logout_at_once_despite_the_grace(mythos_broker: BrokerProcess, ws_player: Any) -> None:
    with mythos_broker.client() as c:  # the default grace, 15 s
        p = ws_player(mythos_broker.ws_url, mythos_broker.token("alice"))
        eventually(lambda: c.presence("alice").online, what="alice online")
        _bye(p)
        off = c.presence("alice")
        assert (off.state, off.seq) == ("offline", 2)
        assert [(f.seq, f.reason) for f in c.presence_facts().facts] == [(1, "connect"), (2, "logout")]


def test_linkdead_inside_the_grace_and_a_reconnect_emits_nothing(
    mythos_broker_factory: BrokerFactory, ws_player: Any
) -> None:
    b = mythos_broker_factory.start(env={"MYTHOS_PRESENCE_GRACE": "10s"})
    with b.client() as c:
        ws_player(b.ws_url, b.token("alice")).close()
        eventually(lambda: c.presence("alice").state == "linkdead", what="alice linkdead")
        dead = c.presence("alice")
        assert dead.until_ms is not None and dead.until_ms > dead.since_ms and dead.seq == 1
        ws_player(b.ws_url, b.token("alice"))
        eventually(lambda: c.presence("alice").online, what="alice back")
        assert c.presence("alice").seq == 1 and len(c.presence_facts().facts) == 1


def test_room_presence_across_pages(mythos_broker: BrokerProcess, ws_player: Any) -> None:
    with mythos_broker.client() as c:
        for name in ["carol", "alice", "bob"]:
            c.join("tavern", name)
        ws_player(mythos_broker.ws_url, mythos_broker.token("bob"))
        eventually(lambda: c.presence("bob").online, what="bob online")
        first = c.room_presence_page("tavern", limit=2)
        assert [p.player_id for p in first.players] == ["alice", "bob"]
        assert (first.online, first.offline, first.linkdead, first.members, first.next_after) == (
            1, 1, 0, 3, "bob")
        last = c.room_presence_page("tavern", after=first.next_after, limit=2)
        assert [p.player_id for p in last.players] == ["carol"] and last.next_after is None
        every = c.room_presence("tavern", page_size=2)
        assert every.pages == 2 and [p.player_id for p in every.players] == ["alice", "bob", "carol"]
        assert (every.online, every.offline, every.linkdead) == (1, 2, 0)
        bob = every.of("bob")
        assert bob is not None and bob.online and every.of("dave") is None
        assert c.room_presence("tavern").pages == 1
        empty = c.room_presence("nobody-here")
        assert (empty.players, empty.pages) == ((), 1)


def test_room_presence_events_opt_in(mythos_broker_factory: BrokerFactory, ws_player: Any) -> None:
    b = mythos_broker_factory.start(env=NOW)
    with b.client() as c:
        assert c.room_presence_events("tavern") is False
        assert c.set_room_presence_events("tavern", True) is True
        assert c.room_presence_events("tavern") is True
        c.join("tavern", "alice")
        c.join("tavern", "bob")
        bob = ws_player(b.ws_url, b.token("bob"))
        eventually(lambda: c.presence("bob").online, what="bob online")
        ws_player(b.ws_url, b.token("alice"))
        entered = bob.until(lambda f: f["type"] == "event" and f["event_type"] == "player_entered"
                            and f["data"].get("presence") == "online")
        assert entered["data"]["player_id"] == "alice" and entered["data"]["presence_seq"] == 1
        assert c.set_room_presence_events("tavern", False) is False
        assert c.room_presence_events("tavern") is False


def test_presence_errors_are_typed(mythos_broker: BrokerProcess) -> None:
    with mythos_broker.client(mythos_broker.token("alice", "player"), retry=ONCE) as c:
        for call in [lambda: c.presence("alice"), lambda: c.room_presence("tavern"),
                     lambda: c.presence_facts(), lambda: c.room_presence_events("tavern"),
                     lambda: c.set_room_presence_events("tavern", True)]:
            with pytest.raises(Forbidden) as f:
                call()
            assert (f.value.status, f.value.code) == (403, "forbidden")
    with mythos_broker.client(retry=ONCE) as c:
        for call in [lambda: c.presence("not a valid id!"), lambda: c.room_presence("bad room!"),
                     lambda: c.room_presence_page("tavern", limit=0),
                     lambda: c.room_presence_page("tavern", limit=501),
                     lambda: c.presence_facts(partition=1), lambda: c.presence_facts(after="nope")]:
            with pytest.raises(BadRequest) as e:
                call()
            assert (e.value.status, e.value.code) == (400, "invalid_request")


def test_async_client_reads_presence(mythos_broker: BrokerProcess, ws_player: Any) -> None:
    ws_player(mythos_broker.ws_url, mythos_broker.token("alice"))

    async def go() -> None:
        async with mythos_broker.async_client() as c:
            await c.join("tavern", "alice")
            deadline = time.monotonic() + 10
            while not (await c.presence("alice")).online:
                assert time.monotonic() < deadline, "alice never online"
                await asyncio.sleep(0.02)
            room = await c.room_presence("tavern")
            assert [(p.player_id, p.state) for p in room.players] == [("alice", "online")]
            assert (await c.room_presence_page("tavern", limit=1)).next_after is None
            assert [f.seq for f in (await c.presence_facts()).facts] == [1]
            assert await c.set_room_presence_events("tavern", True) is True
            assert await c.room_presence_events("tavern") is True

    asyncio.run(go())


# ---- malformed answers (the sans-IO core, no broker) -----------------------------


def _run(flow: Any, *bodies: bytes) -> Any:
    step = next(flow)
    replies = [_core.Response(200, {}, b) for b in bodies]
    try:
        while True:
            assert isinstance(step, _core.Send)
            step = flow.send(replies.pop(0))
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("body", [
    b"[]", b"not json", b'{"player_id":"a","state":"online","since_ms":1,"nodes":[]}',
    b'{"player_id":"a","state":"online","since_ms":"1","nodes":[],"seq":1}',
    b'{"player_id":"a","state":"online","since_ms":1,"nodes":[3],"seq":1}',
    b'{"player_id":"a","state":"online","since_ms":1,"nodes":[],"seq":true}',
])
def test_a_malformed_presence_answer_is_a_broker_error(body: bytes) -> None:
    with pytest.raises(BrokerError) as e:
        _run(_core.presence_flow("t", "a", ONCE), body)
    assert e.value.code == "invalid_answer"


def test_malformed_room_and_fact_pages_and_a_stuck_cursor_are_broker_errors() -> None:
    rec = {"player_id": "a", "state": "online", "since_ms": 1, "nodes": ["n"], "seq": 1}
    page = {"room_id": "r", "players": [rec], "online": 1, "linkdead": 0, "offline": 0,
            "members": 2, "next_after": "a"}
    with pytest.raises(BrokerError, match="does not advance"):
        _run(_core.room_presence_flow("t", "r", None, ONCE),
             json.dumps(page).encode(), json.dumps(page).encode())
    with pytest.raises(BrokerError, match="next_after"):
        _run(_core.room_presence_page_flow("t", "r", None, None, ONCE),
             json.dumps({**page, "next_after": 5}).encode())
    with pytest.raises(BrokerError, match="presence fact"):
        _run(_core.presence_facts_flow("t", 0, "0-0", None, ONCE),
             b'{"partition":0,"partitions":1,"facts":[{"entry_id":"1-0"}],"next_after":null}')
    ok = _run(_core.room_presence_events_flow("t", "r", None, ONCE), b'{"room_id":"r","events":true}')
    assert ok is True
    with pytest.raises(BrokerError):
        _run(_core.room_presence_events_flow("t", "r", None, ONCE), b'{"room_id":"r","events":1}')


# ---- the mythos:presence stream ---------------------------------------------------


def _facts(feed: PresenceFeed, n: int, timeout: float = 10.0) -> list[PresenceFact]:
    got: list[PresenceFact] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        feed.poll(got.append)
    return got


def _connect_drop_connect_bye(b: BrokerProcess, ws_player: Any, player: str = "alice") -> None:
    with b.client() as c:
        ws_player(b.ws_url, b.token(player)).close()
        eventually(lambda: c.presence(player).seq == 2, what=f"{player} offline")
        p = ws_player(b.ws_url, b.token(player))
        eventually(lambda: c.presence(player).seq == 3, what=f"{player} online again")
        _bye(p)


def test_the_feed_reads_facts_with_a_group_and_acks_them(
    mythos_broker_factory: BrokerFactory, ws_player: Any
) -> None:
    server = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=server, env=NOW)
    r = server.client()
    feed = PresenceFeed(r, "game", "g1", block=0.2)
    feed.setup()
    _connect_drop_connect_bye(b, ws_player)
    got = _facts(feed, 4)
    assert [(f.seq, f.state, f.reason) for f in got] == [
        (1, "online", "connect"), (2, "offline", "timeout"), (3, "online", "connect"),
        (4, "offline", "logout")]
    assert all(f.stream == "mythos:presence" and f.gap == 0 and not f.repeat for f in got)
    assert r.xpending("mythos:presence", "game")["pending"] == 0
    # the same facts over HTTP (on Redis as on the embedded engine)
    with b.client() as c:
        assert [(f.entry_id, f.seq) for f in c.presence_facts().facts] == [
            (f.entry_id, f.seq) for f in got]


def test_a_failing_handler_leaves_the_fact_pending_then_it_is_claimed(
    mythos_broker_factory: BrokerFactory, ws_player: Any
) -> None:
    server = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=server, env=NOW)
    r = server.client()
    feed = PresenceFeed(r, "game", "g1", block=0.2, claim_idle=0.2)
    feed.setup()
    ws_player(b.ws_url, b.token("alice"))

    def fail(f: PresenceFact) -> None:
        raise RuntimeError("the game server failed")

    deadline = time.monotonic() + 10
    while r.xpending("mythos:presence", "game")["pending"] == 0:
        feed.poll(fail)
        assert time.monotonic() < deadline
    time.sleep(0.3)
    got: list[PresenceFact] = []
    feed.poll(got.append, block=False)
    assert [(f.seq, f.deliveries) for f in got] == [(1, 2)]
    assert r.xpending("mythos:presence", "game")["pending"] == 0


def test_a_missed_fact_is_a_gap_and_a_malformed_entry_is_skipped(
    mythos_broker_factory: BrokerFactory, ws_player: Any
) -> None:
    server = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=server, env=NOW)
    r = server.client(decode_responses=True)
    _connect_drop_connect_bye(b, ws_player)
    eventually(lambda: r.xlen("mythos:presence") == 4, what="4 facts")
    entries = r.xrange("mythos:presence")
    r.xdel("mythos:presence", entries[1][0])  # seq 2, as if trimmed away
    r.xadd("mythos:presence", {"player_id": "alice", "seq": "five", "state": "online",
                               "reason": "connect", "at": "1", "node": "n"})
    feed = PresenceFeed(r, None, block=0.2)  # plain XREAD from the beginning
    feed.setup()
    got = _facts(feed, 3)
    assert [(f.seq, f.gap) for f in got] == [(1, 0), (3, 1), (4, 0)]
    assert [d.reason for d in feed.dead_letters] == ["malformed: `seq` is not an integer: 'five'"]
    assert feed.seqs.last("alice") == 4
    assert feed.poll(got.append, block=False) == 0  # passed the malformed one
    # a tracker seeded with what the game knew finds the gap in the first fact it sees
    seeded = PresenceFeed(r, None, start_id=entries[1][0], block=0.2)
    seeded.seqs.seed("alice", 1)
    assert [(f.seq, f.gap) for f in _facts(seeded, 2)] == [(3, 1), (4, 0)]


def test_a_failing_handler_without_a_group_reads_the_fact_again(
    mythos_broker_factory: BrokerFactory, ws_player: Any
) -> None:
    server = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=server, env=NOW)
    r = server.client()
    _connect_drop_connect_bye(b, ws_player)
    eventually(lambda: r.xlen("mythos:presence") == 4, what="4 facts")
    feed = PresenceFeed(r, None, block=0.2)
    seen: list[int] = []

    def flaky(f: PresenceFact) -> None:
        seen.append(f.seq)
        if f.seq == 2 and seen.count(2) == 1:
            raise RuntimeError("once")

    assert feed.poll(flaky) == 1  # seq 1; seq 2 failed, 3 and 4 left for the next poll
    assert feed.poll(flaky) == 3
    assert seen == [1, 2, 2, 3, 4]


def test_the_feed_reads_every_partition(mythos_broker_factory: BrokerFactory, ws_player: Any) -> None:
    server = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=server, env={**NOW, "MYTHOS_COMMAND_PARTITIONS": "4"})
    r = server.client(decode_responses=True)
    feed = PresenceFeed(r, "game", "g1", partitions=4, block=0.2)
    feed.setup()
    players = ["alice", "bob", "carol", "dave", "erin", "frank"]
    for name in players:
        ws_player(b.ws_url, b.token(name))
    got = _facts(feed, len(players))
    names = presence_partition_names(4)
    assert names[0] == "mythos:presence:{0.1}"
    assert sorted(f.player_id for f in got) == sorted(players)
    for f in got:
        assert f.stream == names[partition_of(f.player_id, 4)] and f.seq == 1
    assert len({f.stream for f in got}) > 1
    with b.client() as c:
        over_http = [c.presence_facts(partition=i) for i in range(4)]
        assert {p.partitions for p in over_http} == {4}
        assert sorted(f.player_id for p in over_http for f in p.facts) == sorted(players)


def test_async_feed(mythos_broker_factory: BrokerFactory, ws_player: Any) -> None:
    server = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=server, env=NOW)

    async def go() -> list[tuple[int, str]]:
        r = redis.asyncio.Redis(port=server.port)
        feed = AsyncPresenceFeed(r, "game", "a1", block=0.2)
        got: list[tuple[int, str]] = []

        async def handler(f: PresenceFact) -> None:
            got.append((f.seq, f.reason))
            if len(got) == 2:
                feed.stop()

        runner = asyncio.create_task(feed.run(handler))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: ws_player(b.ws_url, b.token("alice")).close())
        await asyncio.wait_for(runner, 10)
        pending = await r.xpending("mythos:presence", "game")
        await r.aclose()
        assert pending["pending"] == 0
        return got

    assert asyncio.run(go()) == [(1, "connect"), (2, "timeout")]


def test_seq_tracker_flags_gaps_and_repeats() -> None:
    from mythos_broker import SeqTracker
    from mythos_broker.presence import fact_from_entry

    raw = {b"player_id": b"alice", b"seq": b"1", b"state": b"online", b"reason": b"connect",
           b"at": b"5", b"node": b"n"}
    t = SeqTracker()
    first = t.check(fact_from_entry("mythos:presence", b"1-0", raw))
    assert (first.seq, first.gap, first.repeat, first.at_ms) == (1, 0, False, 5)  # the baseline
    t.handled(first)
    again = t.check(first)
    assert again.repeat and again.gap == 0
    later = t.check(fact_from_entry("mythos:presence", "9-0", {**raw, b"seq": b"4"}))
    assert (later.gap, later.repeat) == (2, False)
    t.handled(later)
    assert t.last("alice") == 4 and t.last("bob") is None

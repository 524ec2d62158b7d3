"""Publishing against the real broker, and players receiving over SSE and WebSocket,
checked by sequence number."""

from __future__ import annotations

import asyncio
from typing import Any

from mythos_broker import Player, Players, Room
from mythos_broker.testing import BrokerProcess, sse_events


def test_publish_to_a_player_reaches_sse_in_sequence(mythos_broker: BrokerProcess) -> None:
    with mythos_broker.client() as c:
        seqs = [c.publish_to_player("alice", "tick", {"n": i}).sequence_of("alice") for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    got = sse_events(mythos_broker.base_url, mythos_broker.token("alice"), 5)
    assert [e["sequence_number"] for e in got] == [1, 2, 3, 4, 5]
    assert [e["data"] for e in got] == [{"n": i} for i in range(5)]
    assert all(e["id"].startswith("py-") for e in got)  # the automatic idempotency id


def test_publish_reaches_a_websocket_live(mythos_broker: BrokerProcess, ws_player: Any) -> None:
    p = ws_player(mythos_broker.ws_url, mythos_broker.token("bob"))
    with mythos_broker.client() as c:
        r = c.publish(Players(["bob", "carol"]), "chat_message", {"message": "hi"})
    assert {(d.player_id, d.sequence_number) for d in r.deliveries} == {("bob", 1), ("carol", 1)}
    [e] = p.events(1)
    assert (e["event_type"], e["sequence_number"], e["data"], e["id"]) == (
        "chat_message", 1, {"message": "hi"}, r.id,
    )


def test_same_id_gives_the_same_sequence_numbers(mythos_broker: BrokerProcess) -> None:
    with mythos_broker.client() as c:
        c.publish_to_player("alice", "warmup", {})
        first = c.publish(Player("alice"), "tick", {"n": 1}, id="order-42")
        again = c.publish(Player("alice"), "tick", {"n": 1}, id="order-42")
        later = c.publish(Player("alice"), "tick", {"n": 2})
    assert first.deliveries == again.deliveries and first.sequence_of("alice") == 2
    assert later.sequence_of("alice") == 3  # the repeat appended nothing
    got = sse_events(mythos_broker.base_url, mythos_broker.token("alice"), 3)
    assert [e["sequence_number"] for e in got] == [1, 2, 3]


def test_rooms_and_room_publish(mythos_broker: BrokerProcess) -> None:
    with mythos_broker.client() as c:
        assert c.join("tavern", "alice").changed
        c.join("tavern", "bob")
        assert c.members("tavern") == ["alice", "bob"]
        r = c.publish(Room("tavern"), "chat_message", {"m": 1}, room_id="tavern")
        # alice got player_entered (bob) first
        assert {(d.player_id, d.sequence_number) for d in r.deliveries} == {("alice", 2), ("bob", 1)}
        assert c.publish_to_room("empty", "x", {}).deliveries == ()
        assert c.leave("tavern", "bob").member is False


def test_async_client_publishes_the_same(mythos_broker: BrokerProcess) -> None:
    async def go() -> list[int | None]:
        async with mythos_broker.async_client() as c:
            rs = await asyncio.gather(*(c.publish_to_player("dave", "t", {"i": i}) for i in range(10)))
            again = await c.publish_to_player("dave", "t", {}, id=rs[0].id)
            assert again.deliveries == rs[0].deliveries
            return sorted(r.sequence_of("dave") for r in rs)  # type: ignore[type-var]

    assert asyncio.run(go()) == list(range(1, 11))
    got = sse_events(mythos_broker.base_url, mythos_broker.token("dave"), 10)
    assert [e["sequence_number"] for e in got] == list(range(1, 11))

"""The pytest plugin itself: its fixtures, recordings through the binary's
`export`/`replay`, and its message when the binary is missing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mythos_broker.testing import BrokerProcess, Recording, RedisServer, sse_events


def test_record_then_replay_into_another_player(
    mythos_broker: BrokerProcess, mythos_replay: Callable[..., str], tmp_path: Path
) -> None:
    with mythos_broker.client() as c:
        c.join("tavern", "alice")
        for i in range(6):
            c.publish_to_player("alice", "chat_message", {"from": "bob", "message": f"line {i}"},
                                room_id="tavern")
    rec = mythos_broker.export_player("alice")  # `mythos-broker export --player alice --url ...`
    assert [e["sequence_number"] for e in rec.events] == list(range(1, 7))
    path = tmp_path / "alice.jsonl"
    path.write_text(rec.dumps())
    summary = mythos_replay(path, "alice2")  # `mythos-broker replay ... --speed max`
    assert "6 events" in summary
    got = sse_events(mythos_broker.base_url, mythos_broker.token("alice2"), 6)
    assert [(e["event_type"], e["data"]) for e in got] == Recording.from_file(path).view()
    assert [e["sequence_number"] for e in got] == list(range(1, 7))
    assert got[0]["id"] == "replay:alice:1"
    mythos_replay(path, "alice2")  # again: the ids are remembered, nothing is appended
    with mythos_broker.client() as c:
        assert c.publish_to_player("alice2", "marker", {}).sequence_of("alice2") == 7


def test_a_malformed_recording_fails_with_the_line(mythos_broker: BrokerProcess, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"event_type":"x","sequence_number":1,"player_id":"a","timestamp":"2026-01-01T00:00:00Z","data":{}}\nnot json\n')
    with pytest.raises(RuntimeError, match="line 2"):
        mythos_broker.replay(path, "q")
    with pytest.raises(ValueError, match="line 2"):
        Recording.from_file(path)


def test_tokens_and_redis_fixtures(
    mythos_broker_redis: BrokerProcess, mythos_redis: RedisServer, mythos_token: Callable[..., str]
) -> None:
    assert mythos_redis.port != 6379 and mythos_broker_redis.redis_url == mythos_redis.url
    with mythos_broker_redis.client(mythos_token("game", "service")) as c:
        assert c.ready()
        c.publish_to_player("zoe", "x", {"n": 1})
    assert mythos_redis.client().hget("mythos:player:{zoe}:meta", "seq") == b"1"
    assert [e["data"] for e in sse_events(mythos_broker_redis.base_url, mythos_token("zoe"), 1)] == [{"n": 1}]


def test_a_missing_binary_fails_clearly(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        """
        def test_needs_a_broker(mythos_broker):
            pass
        """
    )
    monkeypatch.setenv("MYTHOS_BROKER_BIN", "/nonexistent/mythos-broker")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*MYTHOS_BROKER_BIN=/nonexistent/mythos-broker is not an executable file*"])

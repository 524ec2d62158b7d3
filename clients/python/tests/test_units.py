"""Pure parts, no broker: tokens, partition names, error mapping, the retry loop
driven by hand (the sans-IO core needs no network to be tested)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from mythos_broker import (
    BadRequest,
    Forbidden,
    NotReplicated,
    RateLimited,
    RetryPolicy,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
    mint_token,
    partition_name,
    partition_names,
    partition_of,
)
from mythos_broker import _core
from mythos_broker.errors import error_from_response
from mythos_broker.commands import Command, MalformedEntry, ResendFilter, key_slot


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_token_is_hs256_with_the_brokers_claims() -> None:
    t = mint_token("secret-0123456789abcdef0123456789ab", "alice", "service", ttl=60, now=1000)
    h, c, s = t.split(".")
    assert json.loads(_unb64(h)) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(_unb64(c)) == {"sub": "alice", "iat": 1000, "exp": 1060, "role": "service"}
    want = hmac.new(b"secret-0123456789abcdef0123456789ab", f"{h}.{c}".encode(), hashlib.sha256).digest()
    assert _unb64(s) == want
    with pytest.raises(ValueError):
        mint_token("x" * 16, "alice", "root")  # type: ignore[arg-type]


def test_partition_names_match_the_brokers() -> None:
    # docs/redis-layout.md's table
    assert partition_names(1) == ["mythos:commands"]
    assert partition_names(2) == ["mythos:commands:{0.0}", "mythos:commands:{1.0}"]
    assert partition_names(4) == [
        "mythos:commands:{0.1}", "mythos:commands:{1.3}",
        "mythos:commands:{2.1}", "mythos:commands:{3.3}",
    ]
    assert partition_name(1, 2, "mythos:publish") == "mythos:publish:{1.0}"
    assert key_slot("alice") == 749
    assert partition_of("alice", 4) == 1


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (400, "invalid_json", BadRequest),
        (400, "invalid_target", BadRequest),
        (413, "too_large", TooLarge),
        (429, "rate_limited", RateLimited),
        (503, "engine_unavailable", Unavailable),
        (503, "not_replicated", NotReplicated),
    ],
)
def test_errors_are_typed(status: int, code: str, cls: type) -> None:
    body = json.dumps({"error": {"code": code, "message": "m"}}).encode()
    e = error_from_response(status, {}, body)
    assert type(e) is cls and e.code == code and e.message == "m" and e.status == status


def test_retry_after_from_header_or_body() -> None:
    e = error_from_response(429, {"retry-after": "3"}, b'{"error":{"code":"rate_limited","message":""}}')
    assert isinstance(e, RateLimited) and e.retry_after == 3.0
    e = error_from_response(
        429, {}, b'{"error":{"code":"rate_limited","message":"","retry_after_ms":250}}'
    )
    assert isinstance(e, RateLimited) and e.retry_after == 0.25


def _drive(flow, replies):  # type: ignore[no-untyped-def]
    """Drives a flow with canned replies; returns (result, requests sent, sleeps)."""
    sent, sleeps = [], []
    step = next(flow)
    replies = list(replies)
    try:
        while True:
            if isinstance(step, _core.Send):
                sent.append(step.request)
                step = flow.send(replies.pop(0))
            else:
                sleeps.append(step.seconds)
                step = flow.send(None)
    except StopIteration as stop:
        return stop.value, sent, sleeps


OK = _core.Response(200, {}, b'{"deliveries":[{"player_id":"alice","sequence_number":7}]}')
DOWN = _core.Response(503, {}, b'{"error":{"code":"engine_unavailable","message":"down"}}')


def test_publish_retries_with_the_same_id_and_backs_off() -> None:
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.15, jitter=False)
    flow = _core.publish_flow("t", _core.Player("alice"), "x", {}, None, None, policy)
    result, sent, sleeps = _drive(flow, [ConnectionError("reset"), DOWN, OK])
    assert result.deliveries == (_core.Delivery("alice", 7),) and result.attempts == 3
    assert len({r.body for r in sent}) == 1  # the same body, so the same id, every time
    assert json.loads(sent[0].body or b"")["id"] == result.id and result.id.startswith("py-")
    assert sleeps == [0.1, 0.15]


def test_publish_gives_up_after_its_attempts_and_never_retries_a_400() -> None:
    policy = RetryPolicy(attempts=2, jitter=False, base_delay=0)
    flow = _core.publish_flow("t", _core.Player("a"), "x", {}, "id1", None, policy)
    with pytest.raises(Unavailable):
        _drive(flow, [DOWN, DOWN])
    flow = _core.publish_flow("t", _core.Player("a"), "x", {}, "id1", None, policy)
    with pytest.raises(TransportError):
        _drive(flow, [OSError("refused"), OSError("refused")])
    bad = _core.Response(400, {}, b'{"error":{"code":"invalid_target","message":"no"}}')
    flow = _core.publish_flow("t", _core.Player("a"), "x", {}, "id1", None, policy)
    with pytest.raises(BadRequest) as e:
        _drive(flow, [bad])
    assert e.value.code == "invalid_target"


def test_rate_limited_waits_at_least_retry_after() -> None:
    policy = RetryPolicy(attempts=2, base_delay=0.01, jitter=False)
    limited = _core.Response(429, {"retry-after": "2"}, b'{"error":{"code":"rate_limited","message":""}}')
    flow = _core.publish_flow("t", _core.Player("a"), "x", {}, None, None, policy)
    _, _, sleeps = _drive(flow, [limited, OK])
    assert sleeps == [2.0]


def test_command_entries_parse_and_malformed_ones_are_named() -> None:
    raw = {b"player_id": b"alice", b"session_id": b"s1", b"type": b"command", b"id": b"c1",
           b"payload": b'{"command":"look","args":["north"]}'}
    c = Command.from_entry("mythos:commands", b"1-0", raw)
    assert (c.player_id, c.type, c.id, c.command, c.args) == ("alice", "command", "c1", "look", ["north"])
    assert len(c.publish_id("reply")) <= 64
    with pytest.raises(MalformedEntry, match="payload"):
        Command.from_entry("s", "1-0", {**raw, b"payload": b"{"})
    with pytest.raises(MalformedEntry, match="player_id"):
        Command.from_entry("s", "1-0", {b"type": b"chat"})


def test_resend_filter_recognises_the_same_message_under_another_entry() -> None:
    now = [0.0]
    f = ResendFilter(window=10, clock=lambda: now[0])
    raw = {"player_id": "alice", "type": "command", "id": "c1", "payload": '{"command":"look","args":[]}'}
    first = Command.from_entry("s", "1-0", raw)
    again = Command.from_entry("s", "2-0", raw)
    other = Command.from_entry("s", "3-0", {**raw, "payload": '{"command":"go","args":[]}'})
    assert not f.is_resend(first)
    f.handled(first)
    assert not f.is_resend(first)  # the same entry handed out again is not a resend
    assert f.is_resend(again)
    assert not f.is_resend(other)  # an id reused for another message
    now[0] = 11
    assert not f.is_resend(again)  # outside the window

"""Every typed error provoked for real, and retries that heal a real outage."""

from __future__ import annotations

import threading
import time

import pytest

from mythos_broker import (
    BadRequest,
    BrokerClient,
    Forbidden,
    NotReplicated,
    Players,
    RateLimited,
    RetryPolicy,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
    mint_token,
)
from mythos_broker._core import Request
from mythos_broker.errors import error_from_response
from mythos_broker.pytest_plugin import BrokerFactory
from mythos_broker.testing import BrokerProcess, free_port

ONCE = RetryPolicy(attempts=1)


def test_bad_tokens_are_unauthorized_and_wrong_roles_forbidden(mythos_broker: BrokerProcess) -> None:
    for token in ["not-a-jwt", mint_token("another-secret-0123456789abcdef0123", "game", "service"),
                  mint_token(mythos_broker.secret, "game", "service", ttl=1, now=time.time() - 60)]:
        with BrokerClient(mythos_broker.base_url, token, retry=ONCE) as c:
            with pytest.raises(Unauthorized) as e:
                c.publish_to_player("alice", "x", {})
            assert (e.value.status, e.value.code) == (401, "unauthorized")
            assert not isinstance(e.value, Forbidden)
    with mythos_broker.client(mythos_broker.token("alice", "player")) as c:
        with pytest.raises(Forbidden) as f:
            c.publish_to_player("alice", "x", {})
        assert (f.value.status, f.value.code) == (403, "forbidden")


def test_malformed_bodies_are_bad_requests_with_the_contracts_code(mythos_broker: BrokerProcess) -> None:
    with mythos_broker.client(retry=ONCE) as c:
        with pytest.raises(BadRequest) as e:
            c.publish_to_player("alice", "", {})
        assert (e.value.status, e.value.code) == (400, "invalid_event_type")
        with pytest.raises(BadRequest) as e:
            c.publish(Players([]), "x", {})
        assert e.value.code == "invalid_target"
        with pytest.raises(BadRequest) as e:
            c.publish_to_player("not a valid id!", "x", {})
        assert e.value.code == "invalid_request"
        # a body that is not JSON at all, through the client's own sender
        r = c._send(Request("POST", "/v1/publish", {
            "authorization": f"Bearer {c.token}", "content-type": "application/json"}, b"{nope"))
        err = error_from_response(r.status, r.headers, r.body)
        assert isinstance(err, BadRequest) and (err.status, err.code) == (400, "invalid_json")


def test_oversized_data_is_too_large(mythos_broker_factory: BrokerFactory) -> None:
    b = mythos_broker_factory.start(env={"MYTHOS_MAX_EVENT_BYTES": "64"})
    with b.client(retry=ONCE) as c:
        assert c.publish_to_player("alice", "x", {"s": "a" * 40}).sequence_of("alice") == 1
        with pytest.raises(TooLarge) as e:
            c.publish_to_player("alice", "x", {"s": "a" * 100})
        assert (e.value.status, e.value.code) == (413, "too_large")
        assert isinstance(e.value, BadRequest)


def test_login_flood_is_rate_limited(mythos_broker: BrokerProcess) -> None:
    with mythos_broker.client() as c:
        errors = []
        for _ in range(30):
            try:
                c.login("alice", "wrong")
            except (Unauthorized, RateLimited) as e:
                errors.append(e)
        limited = [e for e in errors if isinstance(e, RateLimited)]
        assert limited, "30 logins at once must hit the limit (2/s, burst 10)"
        assert limited[0].code == "rate_limited" and limited[0].status == 429
        assert limited[0].retry_after is None  # the broker sends no Retry-After for logins
        assert isinstance(errors[0], Unauthorized) and errors[0].code == "invalid_credentials"


def test_engine_unavailable_then_a_retry_heals_it(mythos_broker_factory: BrokerFactory) -> None:
    redis = mythos_broker_factory.redis()
    b = mythos_broker_factory.start(redis=redis)
    with b.client(retry=ONCE) as c:
        first = c.publish_to_player("alice", "x", {"n": 1}, id="p1")
        redis.stop()
        with pytest.raises(Unavailable) as e:
            c.publish_to_player("alice", "x", {"n": 2}, id="p2")
        assert (e.value.status, e.value.code) == (503, "engine_unavailable")
    # with retries: Redis comes back while the client is backing off
    threading.Timer(1.0, redis.start).start()
    with b.client(retry=RetryPolicy(attempts=30, base_delay=0.2, max_delay=0.5)) as c:
        r = c.publish_to_player("bob", "x", {"n": 3}, id="p3")
        assert r.attempts > 1 and r.sequence_of("bob") == 1
        assert c.publish_to_player("bob", "x", {"n": 3}, id="p3").deliveries == r.deliveries
    assert first.sequence_of("alice") == 1


def test_not_replicated_without_replicas(mythos_broker_factory: BrokerFactory) -> None:
    b = mythos_broker_factory.start(
        redis=True,
        env={"MYTHOS_REDIS_WAIT_REPLICAS": "1", "MYTHOS_REDIS_WAIT_TIMEOUT": "100ms"},
    )
    with b.client(retry=RetryPolicy(attempts=2, base_delay=0.01)) as c:
        with pytest.raises(NotReplicated) as e:
            c.publish_to_player("alice", "x", {})
        assert (e.value.status, e.value.code) == (503, "not_replicated") and e.value.retryable


def test_nobody_listening_is_a_transport_error() -> None:
    with BrokerClient(f"http://127.0.0.1:{free_port()}", "t",
                      retry=RetryPolicy(attempts=2, base_delay=0.01)) as c:
        with pytest.raises(TransportError):
            c.publish_to_player("alice", "x", {})

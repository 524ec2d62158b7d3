"""pytest fixtures for game servers' tests (registered through the ``pytest11`` entry
point, so installing the package is enough).

- ``mythos_broker_bin``: the broker binary (``$MYTHOS_BROKER_BIN``, else
  ``<repo>/target/debug/mythos-broker``); a missing one fails the test with how to
  get it.
- ``mythos_broker``: a running broker on the embedded engine, a free port.
- ``mythos_redis``: a ``redis-server`` of its own on a free port (never 6379).
- ``mythos_broker_redis``: a running broker on ``mythos_redis``.
- ``mythos_broker_factory``: ``start(redis=None, env=None)`` for other settings;
  everything it started is stopped after the test.
- ``mythos_token``: ``mint(sub, role="player")``, signed with the test secret.
- ``mythos_replay``: ``replay(recording, to_player)`` into ``mythos_broker``, through
  the binary's ``replay`` subcommand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from .testing import (
    TEST_SECRET,
    BrokerBinaryMissing,
    BrokerProcess,
    Recording,
    RedisServer,
    find_broker_binary,
)
from .tokens import Role, mint_token


class BrokerFactory:
    """Starts brokers (and Redis servers) for one test, and stops them all after it."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self._brokers: list[BrokerProcess] = []
        self._redis: list[RedisServer] = []

    def redis(self) -> RedisServer:
        r = RedisServer()
        self._redis.append(r)
        return r.start()

    def start(
        self,
        *,
        redis: RedisServer | bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> BrokerProcess:
        """A broker on the embedded engine, or on ``redis`` (``True``: a new one)."""
        server = self.redis() if redis is True else (redis or None)
        b = BrokerProcess(
            self.binary, redis_url=server.url if server else None, env=env, secret=TEST_SECRET
        )
        self._brokers.append(b)
        return b.start()

    def close(self) -> None:
        for b in self._brokers:
            b.stop()
        for r in self._redis:
            r.close()


@pytest.fixture(scope="session")
def mythos_broker_bin() -> Path:
    try:
        return find_broker_binary()
    except BrokerBinaryMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def mythos_broker_factory(mythos_broker_bin: Path) -> Iterator[BrokerFactory]:
    f = BrokerFactory(mythos_broker_bin)
    yield f
    f.close()


@pytest.fixture
def mythos_broker(mythos_broker_factory: BrokerFactory) -> BrokerProcess:
    return mythos_broker_factory.start()


@pytest.fixture
def mythos_redis(mythos_broker_factory: BrokerFactory) -> RedisServer:
    return mythos_broker_factory.redis()


@pytest.fixture
def mythos_broker_redis(
    mythos_broker_factory: BrokerFactory, mythos_redis: RedisServer
) -> BrokerProcess:
    return mythos_broker_factory.start(redis=mythos_redis)


@pytest.fixture
def mythos_token() -> Callable[..., str]:
    def mint(sub: str, role: Role = "player", ttl: float = 3600.0) -> str:
        return mint_token(TEST_SECRET, sub, role, ttl=ttl)

    return mint


@pytest.fixture
def mythos_replay(mythos_broker: BrokerProcess) -> Callable[..., str]:
    def replay(recording: str | Path | Recording, to_player: str, speed: str = "max") -> str:
        return mythos_broker.replay(recording, to_player, speed)

    return replay

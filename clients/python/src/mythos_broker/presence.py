"""Following presence facts in the broker's ``mythos:presence`` stream (Redis side).

Every change of a player between online and offline is one entry, appended to the
player's partition of ``mythos:presence`` (partitioned like ``mythos:commands``, by
``MYTHOS_COMMAND_PARTITIONS`` and the same names: ``partition_names(n, PRESENCE)``),
with the fields ``player_id``, ``seq``, ``state`` (``online``/``offline``),
``reason`` (``connect``/``logout``/``timeout``/``node_lost``), ``at`` (ms) and
``node``. See docs/presence.md.

:class:`PresenceFeed` (redis-py, sync) and :class:`AsyncPresenceFeed`
(``redis.asyncio``) read every partition, either with a consumer group (acked once
the handler returned, stale entries claimed, malformed or undeliverable ones
dead-lettered to ``<partition>:dead``: the same machinery as the command consumer,
:mod:`mythos_broker._groups`) or, with ``group=None``, with plain ``XREAD`` from
positions the feed keeps. Each fact reaches the handler as a
:class:`~mythos_broker.PresenceFact` with ``gap`` and ``repeat`` set by the feed's
:class:`SeqTracker`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis
import redis.asyncio

from ._core import PresenceFact
from ._groups import (
    AsyncGroupReader,
    Call,
    GroupCore,
    MalformedEntry,
    OpFlow,
    SyncGroupReader,
    _s,
)
from .commands import partition_names

log = logging.getLogger("mythos_broker.presence")

PRESENCE = "mythos:presence"

__all__ = [
    "PRESENCE",
    "AsyncPresenceFeed",
    "PresenceFeed",
    "SeqTracker",
    "fact_from_entry",
    "presence_partition_names",
]


def presence_partition_names(n: int) -> list[str]:
    """Every partition of ``mythos:presence`` when the broker runs with
    ``MYTHOS_COMMAND_PARTITIONS=n`` (``mythos:presence`` itself when ``n`` is 1)."""
    return partition_names(n, PRESENCE)


def _int(f: Mapping[str, str], key: str) -> int:
    try:
        return int(f[key])
    except ValueError:
        raise MalformedEntry(f"`{key}` is not an integer: {f[key]!r}") from None


def fact_from_entry(
    stream: str, entry_id: Any, raw: Mapping[Any, Any], deliveries: int = 1
) -> PresenceFact:
    """A ``mythos:presence`` entry as a :class:`PresenceFact`; raises
    :class:`~mythos_broker.commands.MalformedEntry` when a field is missing or
    ``seq``/``at`` are not integers."""
    f = {_s(k): _s(v) for k, v in raw.items()}
    missing = [k for k in ("player_id", "seq", "state", "reason", "at", "node") if k not in f]
    if missing:
        raise MalformedEntry(f"missing field(s) {', '.join(missing)}")
    return PresenceFact(
        entry_id=_s(entry_id),
        player_id=f["player_id"],
        seq=_int(f, "seq"),
        state=f["state"],
        reason=f["reason"],
        at_ms=_int(f, "at"),
        node=f["node"],
        stream=stream,
        deliveries=deliveries,
    )


class SeqTracker:
    """The last ``seq`` handled per player, to tell a missed fact (a gap) or a
    re-delivery (a repeat).

    A player's first fact seen by this tracker sets the baseline (no gap can be
    known: the feed may have started mid-stream, or the process restarted); to
    check that one too, :meth:`seed` the tracker with the ``seq`` you already know
    (your own store, or ``client.presence(p).seq`` read before following the
    feed). One int per player seen is kept, in memory, per process: with several
    consumers in one group, a fact handed to another consumer looks like a gap
    here, so use gap detection with one reader per partition (or ``group=None``).
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def last(self, player_id: str) -> int | None:
        with self._lock:
            return self._last.get(player_id)

    def seed(self, player_id: str, seq: int) -> None:
        """``seq`` is the last fact of ``player_id`` already known."""
        with self._lock:
            self._last[player_id] = seq

    def check(self, fact: PresenceFact) -> PresenceFact:
        """``fact`` with ``gap`` and ``repeat`` set against the last handled seq."""
        last = self.last(fact.player_id)
        if last is None:
            return fact
        if fact.seq <= last:
            return replace(fact, gap=0, repeat=True)
        return replace(fact, gap=fact.seq - last - 1, repeat=False)

    def handled(self, fact: PresenceFact) -> None:
        with self._lock:
            if fact.seq > self._last.get(fact.player_id, 0):
                self._last[fact.player_id] = fact.seq


class _FeedCore(GroupCore[PresenceFact]):
    def __init__(self, partitions: int | Sequence[str], group: str | None, consumer: str,
                 **kw: Any) -> None:
        streams = (
            presence_partition_names(partitions)
            if isinstance(partitions, int)
            else list(partitions)
        )
        super().__init__(fact_from_entry, streams, group, consumer, **kw)
        self.seqs = SeqTracker()

    def setup(self) -> OpFlow:
        if self.group is None and self.start_id == "$":
            # XREAD from "$" at every poll would miss what arrives between polls:
            # start from each stream's current last entry instead
            for s in self.streams:
                last = yield Call("xrevrange", (s,), {"max": "+", "min": "-", "count": 1})
                self.positions[s] = _s(last[0][0]) if last else "0-0"
            return
        yield from super().setup()

    def prepare(self, entry: PresenceFact) -> PresenceFact:
        return self.seqs.check(entry)

    def done(self, entry: PresenceFact) -> None:
        self.seqs.handled(entry)


FactHandler = Callable[[PresenceFact], Any]
AsyncFactHandler = Callable[[PresenceFact], Awaitable[Any]]
FactErrorHook = Callable[[PresenceFact, BaseException], Any]


def _default_on_error(fact: PresenceFact, e: BaseException) -> None:
    log.warning(
        "presence fact %s of %s (seq %d, entry %s) failed, left for a retry: %r",
        fact.state, fact.player_id, fact.seq, fact.entry_id, e,
    )


class PresenceFeed(SyncGroupReader[PresenceFact]):
    """Follows ``mythos:presence`` (sync, redis-py).

    ``group="game", consumer="node-1"``: a consumer group (created at
    :meth:`setup`/:meth:`run` from ``start_id``, default the stream's beginning);
    each fact is ``XACK``ed once the handler returned; a handler that raises leaves
    it pending, and it is handed out again after ``claim_idle`` seconds, to the
    dead letters (``<partition>:dead``) after ``max_deliveries``.

    ``group=None``: plain ``XREAD`` from ``start_id`` (``"0"``: the beginning;
    ``"$"``: what comes after :meth:`setup`), positions kept in
    ``feed.core.positions``; a handler that raises stops that partition's batch
    and the next poll reads from the failed fact again.

    ``partitions``: the broker's ``MYTHOS_COMMAND_PARTITIONS`` (or a list of stream
    names). Every fact carries ``gap``/``repeat`` from ``feed.seqs``
    (:class:`SeqTracker`).
    """

    core: _FeedCore

    def __init__(
        self,
        client: redis.Redis,
        group: str | None,
        consumer: str = "presence",
        *,
        partitions: int | Sequence[str] = 1,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        count: int = 100,
        block: float = 1.0,
        start_id: str = "0",
        on_error: FactErrorHook = _default_on_error,
    ) -> None:
        core = _FeedCore(
            partitions, group, consumer, claim_idle=claim_idle,
            max_deliveries=max_deliveries, count=count, block=block, start_id=start_id,
        )
        super().__init__(client, core, on_error, "presence stream")

    @property
    def seqs(self) -> SeqTracker:
        return self.core.seqs


class AsyncPresenceFeed(AsyncGroupReader[PresenceFact]):
    """The asyncio twin of :class:`PresenceFeed` (``redis.asyncio``); the handler
    is a coroutine function."""

    core: _FeedCore

    def __init__(
        self,
        client: redis.asyncio.Redis,
        group: str | None,
        consumer: str = "presence",
        *,
        partitions: int | Sequence[str] = 1,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        count: int = 100,
        block: float = 1.0,
        start_id: str = "0",
        on_error: FactErrorHook = _default_on_error,
    ) -> None:
        core = _FeedCore(
            partitions, group, consumer, claim_idle=claim_idle,
            max_deliveries=max_deliveries, count=count, block=block, start_id=start_id,
        )
        super().__init__(client, core, on_error, "presence stream")

    @property
    def seqs(self) -> SeqTracker:
        return self.core.seqs

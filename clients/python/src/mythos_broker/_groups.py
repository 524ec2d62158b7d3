"""Reading Redis streams with a consumer group, written once for every stream the
library reads (``mythos:commands``, ``mythos:presence``).

The decisions are flows that yield Redis calls as data (:class:`Call`,
:class:`Multi`); :class:`SyncGroupReader` and :class:`AsyncGroupReader` execute
them with redis-py (the same method names, sync or ``redis.asyncio``). What an
entry *is* comes from a parser (``parse(stream, entry_id, fields, deliveries)``,
raising :class:`MalformedEntry`); what a reader does around each handler call
comes from two hooks, :meth:`GroupCore.prepare` and :meth:`GroupCore.done`.

With ``group=None`` a reader follows the streams with plain ``XREAD`` from
positions it keeps (no group, no acks, no claims, no dead letters): an entry's
position is passed once its handler returned; when a handler raises, the rest of
that stream's batch is left for the next poll, which reads it again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, Union

import redis
import redis.asyncio

log = logging.getLogger("mythos_broker")


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


def dead_letter_stream(partition: str) -> str:
    """Where this library moves a partition's dead letters: ``<partition>:dead``."""
    return f"{partition}:dead"


class MalformedEntry(ValueError):
    """A stream entry without the fields the broker writes."""


class Entry(Protocol):
    """What a reader needs of a parsed entry: where it came from."""

    @property
    def stream(self) -> str: ...

    @property
    def entry_id(self) -> str: ...


E = TypeVar("E", bound=Entry)

#: ``parse(stream, entry_id, raw_fields, deliveries)``; raises :class:`MalformedEntry`.
Parser = Callable[[str, str, Mapping[Any, Any], int], E]


# ---- Redis calls as data ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A redis-py client method call; ``ignore`` is an error text to swallow."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    ignore: str | None = None


@dataclass(frozen=True)
class Multi:
    """Calls run in one ``MULTI``/``EXEC`` (a pipeline with ``transaction=True``)."""

    calls: tuple[Call, ...]


Op = Union[Call, Multi]
OpFlow = Generator[Op, Any, Any]


@dataclass(frozen=True)
class DeadLetter:
    stream: str
    entry_id: str
    reason: str


@dataclass
class Batch(Generic[E]):
    """What one poll found: entries to handle and dead letters already moved."""

    entries: list[E] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: The last entry id read, per stream (malformed ones included).
    last: dict[str, str] = field(default_factory=dict)


class GroupCore(Generic[E]):
    """A group reader's decisions, with no I/O. ``group=None``: plain ``XREAD``."""

    def __init__(
        self,
        parse: Parser[E],
        streams: Sequence[str],
        group: str | None,
        consumer: str,
        *,
        claim_idle: float,
        max_deliveries: int,
        count: int,
        block: float,
        start_id: str,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if not streams:
            raise ValueError("no stream to read")
        self.parse = parse
        self.group = group
        self.consumer = consumer
        self.streams = list(streams)
        self.claim_idle_ms = max(1, int(claim_idle * 1000))
        self.max_deliveries = max_deliveries
        self.count = count
        self.block_ms = max(1, int(block * 1000))
        self.start_id = start_id
        #: Without a group: the last entry handled, per stream (``XREAD`` from there).
        self.positions: dict[str, str] = {s: start_id for s in self.streams}

    def setup(self) -> OpFlow:
        if self.group is None:
            return
        for s in self.streams:
            yield Call(
                "xgroup_create",
                (s, self.group),
                {"id": self.start_id, "mkstream": True},
                ignore="BUSYGROUP",
            )

    def _dead(self, stream: str, entry_id: str, fields: Mapping[str, str], reason: str,
              deliveries: int | None) -> Multi:
        assert self.group is not None
        body = dict(fields)
        body.update(
            {
                "reason": reason,
                "entry_id": entry_id,
                "group": self.group,
                "consumer": self.consumer,
            }
        )
        if deliveries is not None:
            body["deliveries"] = str(deliveries)
        return Multi(
            (
                Call("xadd", (dead_letter_stream(stream), body)),
                Call("xack", (stream, self.group, entry_id)),
            )
        )

    def _take(self, batch: Batch[E], stream: str, entry_id: Any, raw: Any,
              deliveries: int) -> OpFlow:
        eid = _s(entry_id)
        batch.last[stream] = eid
        if raw is None:  # deleted (trimmed) while pending: nothing to hand out
            if self.group is not None:
                yield Call("xack", (stream, self.group, eid))
            return
        try:
            entry = self.parse(stream, eid, raw, deliveries)
        except MalformedEntry as e:
            reason = f"malformed: {e}"
            if self.group is None:  # nothing to move it to: skip it, say so
                log.warning("skipping entry %s of %s: %s", eid, stream, reason)
            else:
                fields = {_s(k): _s(v) for k, v in raw.items()}
                yield self._dead(stream, eid, fields, reason, deliveries)
            batch.dead.append(DeadLetter(stream, eid, reason))
            return
        batch.entries.append(entry)

    def claim(self) -> Generator[Op, Any, Batch[E]]:
        """Dead-letters entries delivered ``max_deliveries`` times, then claims
        the other stale ones (``XAUTOCLAIM``). Nothing without a group."""
        batch: Batch[E] = Batch()
        if self.group is None:
            return batch
        for s in self.streams:
            rows = yield Call(
                "xpending_range",
                (s, self.group),
                {"min": "-", "max": "+", "count": self.count, "idle": self.claim_idle_ms},
            )
            counts: dict[str, int] = {}
            for r in rows or []:
                eid = _s(r["message_id"])
                n = int(r["times_delivered"])
                counts[eid] = n
                if n >= self.max_deliveries:
                    entries = yield Call("xrange", (s, eid, eid))
                    fields = (
                        {_s(k): _s(v) for k, v in entries[0][1].items()} if entries else {}
                    )
                    reason = f"max_deliveries: delivered {n} times without an ack"
                    yield self._dead(s, eid, fields, reason, n)
                    batch.dead.append(DeadLetter(s, eid, reason))
            claimed = yield Call(
                "xautoclaim",
                (s, self.group, self.consumer, self.claim_idle_ms),
                {"start_id": "0-0", "count": self.count},
            )
            for entry in (claimed[1] if claimed else []) or []:
                if entry[0] is None:
                    continue
                claimed_id = _s(entry[0])
                yield from self._take(
                    batch, s, claimed_id, entry[1], counts.get(claimed_id, 0) + 1
                )
        return batch

    def read(self, block: bool) -> Generator[Op, Any, Batch[E]]:
        """New entries of every stream (``XREADGROUP ... >``, or ``XREAD`` from the
        positions)."""
        batch: Batch[E] = Batch()
        timeout = self.block_ms if block else None
        if self.group is None:
            reply = yield Call(
                "xread", (dict(self.positions),), {"count": self.count, "block": timeout}
            )
        else:
            reply = yield Call(
                "xreadgroup",
                (self.group, self.consumer, {s: ">" for s in self.streams}),
                {"count": self.count, "block": timeout},
            )
        items = list(reply.items()) if isinstance(reply, dict) else (reply or [])
        for stream, entries in items:
            for entry in entries or []:
                yield from self._take(batch, _s(stream), entry[0], entry[1], 1)
        return batch

    def prepare(self, entry: E) -> E | None:
        """Just before ``entry`` is handled: the entry to hand to the handler (it may
        be marked), or ``None`` to acknowledge it without calling the handler."""
        return entry

    def done(self, entry: E) -> None:
        """After ``entry`` was handled (or skipped by :meth:`prepare`) and before
        its ack."""

    def finish(self, batch: Batch[E], failed: set[str]) -> None:
        """After a batch: without a group, every stream whose handlers all returned
        is passed to its last entry (malformed ones skipped)."""
        if self.group is None:
            for s, eid in batch.last.items():
                if s not in failed:
                    self.positions[s] = eid

    def ack(self, entry: E) -> OpFlow:
        if self.group is None:
            self.positions[entry.stream] = entry.entry_id
            return
        yield Call("xack", (entry.stream, self.group, entry.entry_id))


ErrorHook = Callable[[E, BaseException], Any]


class SyncGroupReader(Generic[E]):
    """Executes a :class:`GroupCore` with a redis-py client (sync)."""

    def __init__(self, client: redis.Redis, core: GroupCore[E],
                 on_error: Callable[[E, BaseException], Any], what: str) -> None:
        self.redis = client
        self.core = core
        self.on_error = on_error
        self.dead_letters: list[DeadLetter] = []
        self._what = what
        self._stop = threading.Event()

    @property
    def streams(self) -> list[str]:
        return list(self.core.streams)

    def _exec(self, op: Op) -> Any:
        if isinstance(op, Multi):
            pipe = self.redis.pipeline(transaction=True)
            for c in op.calls:
                getattr(pipe, c.method)(*c.args, **c.kwargs)
            return pipe.execute()
        try:
            return getattr(self.redis, op.method)(*op.args, **op.kwargs)
        except redis.ResponseError as e:
            if op.ignore is not None and op.ignore in str(e):
                return None
            raise

    def _run(self, flow: Generator[Op, Any, Any]) -> Any:
        try:
            op = next(flow)
            while True:
                op = flow.send(self._exec(op))
        except StopIteration as stop:
            return stop.value

    def setup(self) -> None:
        """Creates the group on every stream (idempotent; ``MKSTREAM``)."""
        self._run(self.core.setup())

    def _handle(self, batch: Batch[E], handler: Callable[[E], Any]) -> int:
        self.dead_letters.extend(batch.dead)
        done = 0
        failed: set[str] = set()
        for raw in batch.entries:
            if self.core.group is None and raw.stream in failed:
                continue  # read again from the failed one at the next poll
            entry = self.core.prepare(raw)
            if entry is not None:
                try:
                    handler(entry)
                except Exception as e:  # noqa: BLE001 - any failure leaves it pending
                    failed.add(raw.stream)
                    self.on_error(entry, e)
                    continue
            self.core.done(entry if entry is not None else raw)
            self._run(self.core.ack(raw))
            done += 1
        self.core.finish(batch, failed)
        return done

    def poll(self, handler: Callable[[E], Any], *, block: bool = True) -> int:
        """One round: claim stale entries, then read new ones (waiting up to
        ``block`` seconds); hands each to ``handler`` and acks it when the
        handler returns. Returns how many entries were acknowledged."""
        done = self._handle(self._run(self.core.claim()), handler)
        return done + self._handle(self._run(self.core.read(block)), handler)

    def run(self, handler: Callable[[E], Any]) -> None:
        """Polls until :meth:`stop` (creates the groups first)."""
        self.setup()
        pause = 0.05
        while not self._stop.is_set():
            try:
                self.poll(handler)
                pause = 0.05
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("%s unreachable, retrying in %.2fs: %r", self._what, pause, e)
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)

    def stop(self) -> None:
        self._stop.set()


class AsyncGroupReader(Generic[E]):
    """Executes a :class:`GroupCore` with a ``redis.asyncio`` client; the handler is
    a coroutine function."""

    def __init__(self, client: redis.asyncio.Redis, core: GroupCore[E],
                 on_error: Callable[[E, BaseException], Any], what: str) -> None:
        self.redis = client
        self.core = core
        self.on_error = on_error
        self.dead_letters: list[DeadLetter] = []
        self._what = what
        self._stop = asyncio.Event()

    @property
    def streams(self) -> list[str]:
        return list(self.core.streams)

    async def _exec(self, op: Op) -> Any:
        if isinstance(op, Multi):
            async with self.redis.pipeline(transaction=True) as pipe:
                for c in op.calls:
                    getattr(pipe, c.method)(*c.args, **c.kwargs)
                return await pipe.execute()
        try:
            return await getattr(self.redis, op.method)(*op.args, **op.kwargs)
        except redis.ResponseError as e:
            if op.ignore is not None and op.ignore in str(e):
                return None
            raise

    async def _run(self, flow: Generator[Op, Any, Any]) -> Any:
        try:
            op = next(flow)
            while True:
                op = flow.send(await self._exec(op))
        except StopIteration as stop:
            return stop.value

    async def setup(self) -> None:
        await self._run(self.core.setup())

    async def _handle(self, batch: Batch[E], handler: Callable[[E], Awaitable[Any]]) -> int:
        self.dead_letters.extend(batch.dead)
        done = 0
        failed: set[str] = set()
        for raw in batch.entries:
            if self.core.group is None and raw.stream in failed:
                continue
            entry = self.core.prepare(raw)
            if entry is not None:
                try:
                    await handler(entry)
                except Exception as e:  # noqa: BLE001 - any failure leaves it pending
                    failed.add(raw.stream)
                    self.on_error(entry, e)
                    continue
            self.core.done(entry if entry is not None else raw)
            await self._run(self.core.ack(raw))
            done += 1
        self.core.finish(batch, failed)
        return done

    async def poll(self, handler: Callable[[E], Awaitable[Any]], *, block: bool = True) -> int:
        done = await self._handle(await self._run(self.core.claim()), handler)
        return done + await self._handle(await self._run(self.core.read(block)), handler)

    async def run(self, handler: Callable[[E], Awaitable[Any]]) -> None:
        await self.setup()
        pause = 0.05
        while not self._stop.is_set():
            try:
                await self.poll(handler)
                pause = 0.05
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("%s unreachable, retrying in %.2fs: %r", self._what, pause, e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    def stop(self) -> None:
        self._stop.set()

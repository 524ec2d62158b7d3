"""Consuming player commands from the broker's command streams (Redis side).

Players' WebSocket ``command`` and ``chat`` messages are appended by the broker to
``mythos:commands`` (or its partitions, ``MYTHOS_COMMAND_PARTITIONS``), one entry
each with the fields ``player_id``, ``session_id``, ``type`` (``command``/``chat``),
``id`` (the client's label) and ``payload`` (``{"command","args"}`` or
``{"channel","message"}`` as JSON). See docs/redis-layout.md.

:class:`CommandConsumer` (redis-py, sync) and :class:`AsyncCommandConsumer`
(``redis.asyncio``) read every partition with one consumer group and:

- acknowledge (``XACK``) an entry once the handler returned; a handler that raises
  leaves it pending;
- claim entries pending longer than ``claim_idle`` (a crashed or stuck consumer's,
  or this one's own failures) with ``XAUTOCLAIM`` and hand them out again;
- move an entry delivered ``max_deliveries`` times without an ack, or one that is
  malformed, to the dead-letter stream ``<partition>:dead`` (the same naming as the
  broker's ``mythos:publish:dead``; same slot on a cluster), in one ``MULTI`` with
  its ``XACK``;
- recognise resends: a client that did not see ``command_accepted`` resends the
  message with the same ``id``, so the stream may hold it twice. A repeat of the
  same ``player_id``, ``id`` and ``payload`` within ``resend_window`` is marked
  :attr:`Command.resend` and, by default, acknowledged without calling the handler.

Like the HTTP client, the logic is written once: the consumer's steps are flows
that yield Redis calls (:class:`Call`, :class:`Multi`) which the sync and async
shells execute with the same redis-py method names.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import redis
import redis.asyncio

log = logging.getLogger("mythos_broker.commands")

COMMANDS = "mythos:commands"
SLOTS = 16384


def key_slot(tag: str) -> int:
    """Redis Cluster's key slot of a hash tag's text (CRC16-XMODEM mod 16384)."""
    return binascii.crc_hqx(tag.encode("utf-8"), 0) % SLOTS


def partition_name(i: int, n: int, base: str = COMMANDS) -> str:
    """Partition ``i`` of ``n`` of ``base`` exactly as the broker names it
    (``src/engine/redis/keys.rs``): ``base`` itself when ``n`` is 1, else
    ``base:{<i>.<k>}`` with the smallest ``k`` whose slot falls in the ``i``-th
    of ``n`` equal slot ranges."""
    if n <= 1:
        return base
    lo = SLOTS * i // n
    hi = max(SLOTS * (i + 1) // n, lo + 1)
    k = 0
    while not lo <= key_slot(f"{i}.{k}") < hi:
        k += 1
    return f"{base}:{{{i}.{k}}}"


def partition_names(n: int, base: str = COMMANDS) -> list[str]:
    """Every partition of ``base`` when the broker runs with ``n`` partitions."""
    return [partition_name(i, n, base) for i in range(max(1, n))]


def partition_of(player_id: str, n: int) -> int:
    """The partition (of ``n``) holding ``player_id``'s commands."""
    return key_slot(player_id) % max(1, n)


def dead_letter_stream(partition: str) -> str:
    """Where this library moves a partition's dead letters: ``<partition>:dead``."""
    return f"{partition}:dead"


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


class MalformedEntry(ValueError):
    """A command-stream entry without the fields the broker writes."""


@dataclass(frozen=True)
class Command:
    """One entry of a command stream."""

    stream: str
    entry_id: str
    player_id: str
    session_id: str
    type: str
    id: str
    payload: Mapping[str, Any]
    #: How many times the group has handed this entry out (1 the first time).
    deliveries: int = 1
    #: The same player, ``id`` and ``payload`` were handled within the window.
    resend: bool = False
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str | None:
        v = self.payload.get("command")
        return v if isinstance(v, str) else None

    @property
    def args(self) -> list[str]:
        v = self.payload.get("args")
        return [str(a) for a in v] if isinstance(v, list) else []

    @property
    def channel(self) -> str | None:
        v = self.payload.get("channel")
        return v if isinstance(v, str) else None

    @property
    def message(self) -> str | None:
        v = self.payload.get("message")
        return v if isinstance(v, str) else None

    def publish_id(self, suffix: str = "0") -> str:
        """An idempotency id for an event this command causes, derived from the
        stream entry: handling the same entry twice (a claim after a crash)
        publishes it once. ``suffix`` tells several events of one command apart
        (``[A-Za-z0-9_-]``; the whole id stays within 64 characters)."""
        tag = str(key_slot(self.stream))
        return f"c{tag}-{self.entry_id}-{suffix}"[:64]

    @staticmethod
    def from_entry(
        stream: str, entry_id: Any, raw: Mapping[Any, Any], deliveries: int = 1
    ) -> Command:
        f = {_s(k): _s(v) for k, v in raw.items()}
        missing = [k for k in ("player_id", "type", "id", "payload") if k not in f]
        if missing:
            raise MalformedEntry(f"missing field(s) {', '.join(missing)}")
        try:
            payload = json.loads(f["payload"])
        except ValueError as e:
            raise MalformedEntry(f"payload is not JSON: {e}") from None
        if not isinstance(payload, dict):
            raise MalformedEntry("payload is not a JSON object")
        return Command(
            stream=stream,
            entry_id=_s(entry_id),
            player_id=f["player_id"],
            session_id=f.get("session_id", ""),
            type=f["type"],
            id=f["id"],
            payload=payload,
            deliveries=deliveries,
            fields=f,
        )


class ResendFilter:
    """Remembers handled messages, (player, id) → (payload, when), for ``window``
    seconds, as the demo world does. In-process: with several consumer processes,
    a resend handed to another process is not recognised (see README)."""

    def __init__(self, window: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[str, float, str]] = {}
        self._lock = threading.Lock()

    def is_resend(self, cmd: Command) -> bool:
        """True when another entry with the same player, id and payload was
        handled within the window (the same entry handed out again is not)."""
        now = self._clock()
        with self._lock:
            hit = self._seen.get((cmd.player_id, cmd.id))
        if hit is None:
            return False
        payload, at, entry = hit
        return (
            entry != f"{cmd.stream}/{cmd.entry_id}"
            and payload == cmd.fields.get("payload")
            and now - at < self.window
        )

    def handled(self, cmd: Command) -> None:
        now = self._clock()
        with self._lock:
            if len(self._seen) >= 4096 and (len(self._seen) & (len(self._seen) - 1)) == 0:
                self._seen = {k: v for k, v in self._seen.items() if now - v[1] < self.window}
            self._seen[(cmd.player_id, cmd.id)] = (
                cmd.fields.get("payload", ""),
                now,
                f"{cmd.stream}/{cmd.entry_id}",
            )


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
class _Batch:
    """What one poll found: commands to handle and dead letters already moved."""

    commands: list[Command] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class _ConsumerCore:
    """The consumer's decisions, with no I/O."""

    def __init__(
        self,
        group: str,
        consumer: str,
        partitions: int | Sequence[str],
        claim_idle: float,
        max_deliveries: int,
        count: int,
        block: float,
        resend_window: float,
        skip_resends: bool,
        start_id: str,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.group = group
        self.consumer = consumer
        self.streams = (
            partition_names(partitions) if isinstance(partitions, int) else list(partitions)
        )
        self.claim_idle_ms = max(1, int(claim_idle * 1000))
        self.max_deliveries = max_deliveries
        self.count = count
        self.block_ms = max(1, int(block * 1000))
        self.resends = ResendFilter(resend_window)
        self.skip_resends = skip_resends
        self.start_id = start_id

    def setup(self) -> OpFlow:
        for s in self.streams:
            yield Call(
                "xgroup_create",
                (s, self.group),
                {"id": self.start_id, "mkstream": True},
                ignore="BUSYGROUP",
            )

    def _dead(self, stream: str, entry_id: str, fields: Mapping[str, str], reason: str,
              deliveries: int | None) -> Multi:
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

    def _take(self, batch: _Batch, stream: str, entry_id: Any, raw: Any,
              deliveries: int) -> OpFlow:
        eid = _s(entry_id)
        if raw is None:  # deleted (trimmed) while pending: nothing to hand out
            yield Call("xack", (stream, self.group, eid))
            return
        try:
            cmd = Command.from_entry(stream, eid, raw, deliveries)
        except MalformedEntry as e:
            fields = {_s(k): _s(v) for k, v in raw.items()}
            reason = f"malformed: {e}"
            yield self._dead(stream, eid, fields, reason, deliveries)
            batch.dead.append(DeadLetter(stream, eid, reason))
            return
        batch.commands.append(cmd)

    def claim(self) -> Generator[Op, Any, _Batch]:
        """Dead-letters entries delivered ``max_deliveries`` times, then claims
        the other stale ones (``XAUTOCLAIM``)."""
        batch = _Batch()
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

    def read(self, block: bool) -> Generator[Op, Any, _Batch]:
        """New entries of every partition (``XREADGROUP ... >``)."""
        batch = _Batch()
        reply = yield Call(
            "xreadgroup",
            (self.group, self.consumer, {s: ">" for s in self.streams}),
            {"count": self.count, "block": self.block_ms if block else None},
        )
        items = list(reply.items()) if isinstance(reply, dict) else (reply or [])
        for stream, entries in items:
            for entry in entries or []:
                yield from self._take(batch, _s(stream), entry[0], entry[1], 1)
        return batch

    def mark(self, cmd: Command) -> Command:
        """``cmd`` marked as a resend when it is one (decided just before it is
        handled, so a resend in the same batch as its original is recognised)."""
        if self.resends.is_resend(cmd):
            return dataclasses.replace(cmd, resend=True)
        return cmd

    def ack(self, cmd: Command) -> OpFlow:
        yield Call("xack", (cmd.stream, self.group, cmd.entry_id))
        self.resends.handled(cmd)


Handler = Callable[[Command], Any]
AsyncHandler = Callable[[Command], Awaitable[Any]]
ErrorHook = Callable[[Command, BaseException], Any]


def _default_on_error(cmd: Command, e: BaseException) -> None:
    log.warning(
        "command %s of %s (entry %s) failed, left pending for a retry: %r",
        cmd.id, cmd.player_id, cmd.entry_id, e,
    )


class CommandConsumer:
    """Reads player commands with a consumer group (sync, redis-py).

    ``partitions`` is the broker's ``MYTHOS_COMMAND_PARTITIONS`` (or a list of
    stream names, e.g. one partition for a reader per partition). All streams are
    read in one ``XREADGROUP``, which on a Redis Cluster needs them in one slot:
    there, run one consumer per partition (``partitions=[partition_name(i, n)]``).
    """

    def __init__(
        self,
        client: redis.Redis,
        group: str,
        consumer: str,
        *,
        partitions: int | Sequence[str] = 1,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        count: int = 100,
        block: float = 1.0,
        resend_window: float = 3600.0,
        skip_resends: bool = True,
        start_id: str = "0",
        on_error: ErrorHook = _default_on_error,
    ) -> None:
        self.redis = client
        self.core = _ConsumerCore(
            group, consumer, partitions, claim_idle, max_deliveries, count, block,
            resend_window, skip_resends, start_id,
        )
        self.on_error = on_error
        self.dead_letters: list[DeadLetter] = []
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
        """Creates the group on every partition (idempotent; ``MKSTREAM``)."""
        self._run(self.core.setup())

    def _handle(self, batch: _Batch, handler: Handler) -> int:
        self.dead_letters.extend(batch.dead)
        done = 0
        for cmd in map(self.core.mark, batch.commands):
            if not (cmd.resend and self.core.skip_resends):
                try:
                    handler(cmd)
                except Exception as e:  # noqa: BLE001 - any failure leaves it pending
                    self.on_error(cmd, e)
                    continue
            self._run(self.core.ack(cmd))
            done += 1
        return done

    def poll(self, handler: Handler, *, block: bool = True) -> int:
        """One round: claim stale entries, then read new ones (waiting up to
        ``block`` seconds); hands each to ``handler`` and acks it when the
        handler returns. Returns how many entries were acknowledged."""
        done = self._handle(self._run(self.core.claim()), handler)
        return done + self._handle(self._run(self.core.read(block)), handler)

    def run(self, handler: Handler) -> None:
        """Polls until :meth:`stop` (creates the groups first)."""
        self.setup()
        pause = 0.05
        while not self._stop.is_set():
            try:
                self.poll(handler)
                pause = 0.05
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("command stream unreachable, retrying in %.2fs: %r", pause, e)
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)

    def stop(self) -> None:
        self._stop.set()


class AsyncCommandConsumer:
    """The asyncio twin of :class:`CommandConsumer` (``redis.asyncio``); the
    handler is a coroutine function."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        group: str,
        consumer: str,
        *,
        partitions: int | Sequence[str] = 1,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        count: int = 100,
        block: float = 1.0,
        resend_window: float = 3600.0,
        skip_resends: bool = True,
        start_id: str = "0",
        on_error: ErrorHook = _default_on_error,
    ) -> None:
        self.redis = client
        self.core = _ConsumerCore(
            group, consumer, partitions, claim_idle, max_deliveries, count, block,
            resend_window, skip_resends, start_id,
        )
        self.on_error = on_error
        self.dead_letters: list[DeadLetter] = []
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

    async def _handle(self, batch: _Batch, handler: AsyncHandler) -> int:
        self.dead_letters.extend(batch.dead)
        done = 0
        for cmd in map(self.core.mark, batch.commands):
            if not (cmd.resend and self.core.skip_resends):
                try:
                    await handler(cmd)
                except Exception as e:  # noqa: BLE001 - any failure leaves it pending
                    self.on_error(cmd, e)
                    continue
            await self._run(self.core.ack(cmd))
            done += 1
        return done

    async def poll(self, handler: AsyncHandler, *, block: bool = True) -> int:
        done = await self._handle(await self._run(self.core.claim()), handler)
        return done + await self._handle(await self._run(self.core.read(block)), handler)

    async def run(self, handler: AsyncHandler) -> None:
        await self.setup()
        pause = 0.05
        while not self._stop.is_set():
            try:
                await self.poll(handler)
                pause = 0.05
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("command stream unreachable, retrying in %.2fs: %r", pause, e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    def stop(self) -> None:
        self._stop.set()

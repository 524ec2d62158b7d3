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
shells execute with the same redis-py method names. The group reading itself
(claims, dead letters, acks) is :mod:`mythos_broker._groups`, shared with the
presence feed; this module adds what a command is and the resend filter.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from ._groups import (
    AsyncGroupReader,
    Call,
    DeadLetter,
    GroupCore,
    MalformedEntry,
    Multi,
    Op,
    OpFlow,
    SyncGroupReader,
    _s,
    dead_letter_stream,
)

__all__ = [
    "COMMANDS", "AsyncCommandConsumer", "Call", "Command", "CommandConsumer", "DeadLetter",
    "MalformedEntry", "Multi", "Op", "OpFlow", "ResendFilter", "dead_letter_stream",
    "key_slot", "partition_name", "partition_names", "partition_of",
]

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


# ---- the consumer ----------------------------------------------------------------


class _ConsumerCore(GroupCore[Command]):
    """The consumer's decisions, with no I/O: a group reader of :class:`Command`
    that recognises resends."""

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
        super().__init__(
            Command.from_entry,
            partition_names(partitions) if isinstance(partitions, int) else list(partitions),
            group,
            consumer,
            claim_idle=claim_idle,
            max_deliveries=max_deliveries,
            count=count,
            block=block,
            start_id=start_id,
        )
        self.resends = ResendFilter(resend_window)
        self.skip_resends = skip_resends

    def mark(self, cmd: Command) -> Command:
        """``cmd`` marked as a resend when it is one (decided just before it is
        handled, so a resend in the same batch as its original is recognised)."""
        if self.resends.is_resend(cmd):
            return dataclasses.replace(cmd, resend=True)
        return cmd

    def prepare(self, entry: Command) -> Command | None:
        cmd = self.mark(entry)
        return None if cmd.resend and self.skip_resends else cmd

    def done(self, entry: Command) -> None:
        self.resends.handled(entry)


Handler = Callable[[Command], Any]
AsyncHandler = Callable[[Command], Awaitable[Any]]
ErrorHook = Callable[[Command, BaseException], Any]


def _default_on_error(cmd: Command, e: BaseException) -> None:
    log.warning(
        "command %s of %s (entry %s) failed, left pending for a retry: %r",
        cmd.id, cmd.player_id, cmd.entry_id, e,
    )


class CommandConsumer(SyncGroupReader[Command]):
    """Reads player commands with a consumer group (sync, redis-py).

    ``partitions`` is the broker's ``MYTHOS_COMMAND_PARTITIONS`` (or a list of
    stream names, e.g. one partition for a reader per partition). All streams are
    read in one ``XREADGROUP``, which on a Redis Cluster needs them in one slot:
    there, run one consumer per partition (``partitions=[partition_name(i, n)]``).
    :meth:`poll`, :meth:`run`, :meth:`setup` and :meth:`stop` are
    :class:`~mythos_broker._groups.SyncGroupReader`'s.
    """

    core: _ConsumerCore

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
        core = _ConsumerCore(
            group, consumer, partitions, claim_idle, max_deliveries, count, block,
            resend_window, skip_resends, start_id,
        )
        super().__init__(client, core, on_error, "command stream")


class AsyncCommandConsumer(AsyncGroupReader[Command]):
    """The asyncio twin of :class:`CommandConsumer` (``redis.asyncio``); the
    handler is a coroutine function."""

    core: _ConsumerCore

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
        core = _ConsumerCore(
            group, consumer, partitions, claim_idle, max_deliveries, count, block,
            resend_window, skip_resends, start_id,
        )
        super().__init__(client, core, on_error, "command stream")

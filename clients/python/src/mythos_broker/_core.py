"""The sans-IO core of the HTTP client: it builds requests, interprets answers and
decides about retries, and does no I/O itself.

Each operation is a generator (a *flow*) that yields :class:`Send` (a request to
send; the shell sends back a :class:`Response` or the transport exception) or
:class:`Sleep` (the shell sleeps, sends back ``None``), and returns the
operation's result. ``client.py`` drives the same flows with ``httpx.Client`` and
``time.sleep`` or with ``httpx.AsyncClient`` and ``asyncio.sleep``: the sync and
async clients share every line of logic, including the retry loop.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union
from urllib.parse import quote

from .errors import BrokerError, MythosError, RateLimited, TransportError, error_from_response

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None = None


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case keys
    body: bytes


@dataclass(frozen=True)
class Send:
    request: Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Union[Send, Sleep]
Reply = Union[Response, Exception, None]
Flow = Generator[Step, Reply, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is tried again.

    Retried: transport failures (refused, reset, timed out), ``503``
    (``engine_unavailable``, ``not_replicated``), ``429`` (after its
    ``retry_after`` when given) and a proxy's ``502``/``504``. Never retried: any
    other 4xx, which the same request cannot fix. A publish is safe to retry because
    it always carries an ``id`` the broker dedupes by. The delay before retry ``n``
    (1-based) is ``min(max_delay, base_delay * 2**(n-1))`` scaled by a random factor
    in ``[0.5, 1]`` (so many game servers do not retry in step).
    """

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 2.0
    jitter: bool = True

    def delay(self, retry: int, error: MythosError | None = None) -> float:
        d: float = min(self.max_delay, self.base_delay * (2.0 ** (retry - 1)))
        if self.jitter:
            d *= random.uniform(0.5, 1.0)
        if isinstance(error, RateLimited) and error.retry_after is not None:
            d = max(d, error.retry_after)
        return d

    @staticmethod
    def retryable(error: MythosError) -> bool:
        if isinstance(error, TransportError):
            return True
        return isinstance(error, BrokerError) and error.retryable


NO_RETRY = RetryPolicy(attempts=1)


def new_publish_id() -> str:
    """A fresh idempotency id: ``py-`` and 32 hex digits (fits ``[A-Za-z0-9_-]{1,64}``)."""
    return "py-" + uuid.uuid4().hex


# ---- targets and results -------------------------------------------------------


@dataclass(frozen=True)
class Player:
    """Publish to one player."""

    player_id: str

    def wire(self) -> dict[str, Any]:
        return {"player": self.player_id}


@dataclass(frozen=True)
class Players:
    """Publish to a list of players (1–1000 ids; repeats are collapsed by the broker)."""

    player_ids: tuple[str, ...]

    def __init__(self, player_ids: Sequence[str]) -> None:
        object.__setattr__(self, "player_ids", tuple(player_ids))

    def wire(self) -> dict[str, Any]:
        return {"players": list(self.player_ids)}


@dataclass(frozen=True)
class Room:
    """Publish to every member of a room (none for an empty room)."""

    room_id: str

    def wire(self) -> dict[str, Any]:
        return {"room": self.room_id}


Target = Union[Player, Players, Room]


@dataclass(frozen=True)
class Delivery:
    """One player's copy of a published event: its place in that player's log."""

    player_id: str
    sequence_number: int


@dataclass(frozen=True)
class PublishResult:
    """The answer of a publish: the ``id`` it carried and every delivery."""

    id: str
    deliveries: tuple[Delivery, ...]
    #: How many requests it took (1 = no retry).
    attempts: int = 1

    def sequence_of(self, player_id: str) -> int | None:
        """The sequence number ``player_id`` got, or ``None``."""
        for d in self.deliveries:
            if d.player_id == player_id:
                return d.sequence_number
        return None


@dataclass(frozen=True)
class RoomChange:
    room_id: str
    player_id: str
    member: bool
    changed: bool
    deliveries: tuple[Delivery, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: int
    player_id: str
    token_type: str = "Bearer"


@dataclass(frozen=True)
class Presence:
    """A player's presence (``GET /v1/presence/players/{player}``).

    ``state`` is ``online`` (a connection on some node), ``linkdead`` (lost the
    last one less than ``MYTHOS_PRESENCE_GRACE`` ago; ``until_ms`` is when they go
    offline) or ``offline`` (also: never seen, with ``since_ms`` 0 and ``seq`` 0).
    ``nodes`` are the broker nodes holding a connection; ``seq`` is the player's
    last fact's number in ``mythos:presence``.
    """

    player_id: str
    state: str
    since_ms: int
    until_ms: int | None
    nodes: tuple[str, ...]
    seq: int

    @property
    def online(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True)
class RoomPresencePage:
    """One page of ``GET /v1/presence/{room}``: members sorted by id after the
    page's ``after``; the counts are the page's; ``members`` is the room's size;
    ``next_after`` is ``None`` on the last page."""

    room_id: str
    players: tuple[Presence, ...]
    online: int
    linkdead: int
    offline: int
    members: int
    next_after: str | None


@dataclass(frozen=True)
class RoomPresence:
    """Every member of a room with their presence (all pages of
    ``GET /v1/presence/{room}``), sorted by id; the counts are over ``players``.
    The pages are read one after another, so a member who joins or leaves
    meanwhile may be missed or counted."""

    room_id: str
    players: tuple[Presence, ...]
    pages: int = 1

    def _count(self, state: str) -> int:
        return sum(p.state == state for p in self.players)

    @property
    def online(self) -> int:
        return self._count("online")

    @property
    def linkdead(self) -> int:
        return self._count("linkdead")

    @property
    def offline(self) -> int:
        return self._count("offline")

    def of(self, player_id: str) -> Presence | None:
        for p in self.players:
            if p.player_id == player_id:
                return p
        return None


@dataclass(frozen=True)
class PresenceFact:
    """One change between online and offline: an entry of ``mythos:presence`` (from
    the stream, :class:`~mythos_broker.PresenceFeed`, or over HTTP,
    ``presence_facts``).

    ``seq`` is per player, 1, 2, 3 … without gaps (odd = online, even = offline);
    ``reason`` is ``connect``, ``logout``, ``timeout`` or ``node_lost``; ``at_ms``
    is Redis's clock; ``node`` the broker node (lease name) that recorded it.

    The rest is filled by a feed: ``stream`` (the partition read), ``deliveries``
    (hand-outs by the group), ``gap`` (how many of this player's facts the feed
    missed just before this one: ``seq`` minus the last ``seq`` it handled minus 1)
    and ``repeat`` (``seq`` is not above the last one handled: a re-delivery).
    """

    entry_id: str
    player_id: str
    seq: int
    state: str
    reason: str
    at_ms: int
    node: str
    stream: str = ""
    deliveries: int = 1
    gap: int = 0
    repeat: bool = False

    @property
    def online(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True)
class PresenceFactsPage:
    """``GET /v1/presence/facts/{partition}``: facts after ``after`` in one
    partition (of ``partitions``). ``next_after`` is the last fact's entry id when
    the page is full (there may be more), else ``None``; :attr:`resume` is where
    to read from next either way."""

    partition: int
    partitions: int
    facts: tuple[PresenceFact, ...]
    next_after: str | None
    after: str = "0-0"

    @property
    def resume(self) -> str:
        return self.facts[-1].entry_id if self.facts else self.after


# ---- requests ------------------------------------------------------------------


def _headers(token: str | None, body: bool) -> dict[str, str]:
    h = {"accept": "application/json"}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    if body:
        h["content-type"] = "application/json"
    return h


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def publish_request(
    token: str,
    target: Target,
    event_type: str,
    data: Any,
    publish_id: str,
    room_id: str | None = None,
) -> Request:
    body: dict[str, Any] = {
        "to": target.wire(),
        "event_type": event_type,
        "data": data,
        "id": publish_id,
    }
    if room_id is not None:
        body["room_id"] = room_id
    return Request("POST", "/v1/publish", _headers(token, True), _json(body))


def _seg(s: str) -> str:
    return quote(s, safe="")


# ---- interpreting answers -------------------------------------------------------


def _body(resp: Response) -> Any:
    try:
        return json.loads(resp.body)
    except ValueError as e:
        raise BrokerError(resp.status, "invalid_answer", f"the broker's answer is not JSON: {e}")


def _deliveries(raw: Any) -> tuple[Delivery, ...]:
    if not isinstance(raw, list):
        raise BrokerError(200, "invalid_answer", "`deliveries` is not a list")
    out = []
    for d in raw:
        if not (
            isinstance(d, dict)
            and isinstance(d.get("player_id"), str)
            and isinstance(d.get("sequence_number"), int)
        ):
            raise BrokerError(200, "invalid_answer", f"a malformed delivery: {d!r}")
        out.append(Delivery(d["player_id"], d["sequence_number"]))
    return tuple(out)


# ---- flows -----------------------------------------------------------------------


def _call(request: Request, retry: RetryPolicy) -> Generator[Step, Reply, tuple[Response, int]]:
    """Sends ``request`` until it gets a 2xx answer or a final error; returns the
    answer and how many attempts it took."""
    attempt = 0
    while True:
        attempt += 1
        reply = yield Send(request)
        error: MythosError
        if isinstance(reply, Response):
            if 200 <= reply.status < 300:
                return reply, attempt
            error = error_from_response(reply.status, reply.headers, reply.body)
        elif isinstance(reply, Exception):
            error = TransportError(f"{request.method} {request.path}: {reply!r}")
            error.__cause__ = reply
        else:  # pragma: no cover - a shell bug
            raise TypeError(f"a flow expected a response, got {reply!r}")
        if attempt >= retry.attempts or not retry.retryable(error):
            raise error
        yield Sleep(retry.delay(attempt, error))


def publish_flow(
    token: str,
    target: Target,
    event_type: str,
    data: Any,
    publish_id: str | None,
    room_id: str | None,
    retry: RetryPolicy,
) -> Generator[Step, Reply, PublishResult]:
    pid = publish_id if publish_id is not None else new_publish_id()
    resp, attempts = yield from _call(
        publish_request(token, target, event_type, data, pid, room_id), retry
    )
    body = _body(resp)
    if not isinstance(body, dict):
        raise BrokerError(resp.status, "invalid_answer", "the publish answer is not an object")
    return PublishResult(pid, _deliveries(body.get("deliveries")), attempts)


def room_flow(
    token: str, method: str, room_id: str, player_id: str, retry: RetryPolicy
) -> Generator[Step, Reply, RoomChange]:
    req = Request(
        method,
        f"/v1/rooms/{_seg(room_id)}/members/{_seg(player_id)}",
        _headers(token, False),
    )
    resp, _ = yield from _call(req, retry)
    b = _body(resp)
    return RoomChange(
        str(b["room_id"]),
        str(b["player_id"]),
        bool(b["member"]),
        bool(b["changed"]),
        _deliveries(b.get("deliveries", [])),
    )


def members_flow(token: str, room_id: str, retry: RetryPolicy) -> Generator[Step, Reply, list[str]]:
    req = Request("GET", f"/v1/rooms/{_seg(room_id)}/members", _headers(token, False))
    resp, _ = yield from _call(req, retry)
    return [str(m) for m in _body(resp)["members"]]


# ---- presence -------------------------------------------------------------------


def _bad(resp: Response, what: str) -> BrokerError:
    return BrokerError(resp.status, "invalid_answer", what)


def _object(resp: Response, what: str) -> dict[str, Any]:
    b = _body(resp)
    if not isinstance(b, dict):
        raise _bad(resp, f"the {what} answer is not an object")
    return b


def _field(resp: Response, d: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    v = d.get(key)
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise _bad(resp, f"{what}: `{key}` is not a {kind.__name__}: {v!r}")
    return v


def _opt_str(resp: Response, d: Mapping[str, Any], key: str, what: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise _bad(resp, f"{what}: `{key}` is not a string or null: {v!r}")
    return v


def _presence(resp: Response, d: Any) -> Presence:
    what = "a presence record"
    if not isinstance(d, dict):
        raise _bad(resp, f"{what} is not an object: {d!r}")
    nodes = _field(resp, d, "nodes", list, what)
    if not all(isinstance(n, str) for n in nodes):
        raise _bad(resp, f"{what}: `nodes` is not a list of strings: {nodes!r}")
    until = d.get("until_ms")
    if until is not None:
        until = _field(resp, d, "until_ms", int, what)
    return Presence(
        player_id=_field(resp, d, "player_id", str, what),
        state=_field(resp, d, "state", str, what),
        since_ms=_field(resp, d, "since_ms", int, what),
        until_ms=until,
        nodes=tuple(nodes),
        seq=_field(resp, d, "seq", int, what),
    )


def _fact(resp: Response, d: Any) -> PresenceFact:
    what = "a presence fact"
    if not isinstance(d, dict):
        raise _bad(resp, f"{what} is not an object: {d!r}")
    return PresenceFact(
        entry_id=_field(resp, d, "entry_id", str, what),
        player_id=_field(resp, d, "player_id", str, what),
        seq=_field(resp, d, "seq", int, what),
        state=_field(resp, d, "state", str, what),
        reason=_field(resp, d, "reason", str, what),
        at_ms=_field(resp, d, "at_ms", int, what),
        node=_field(resp, d, "node", str, what),
    )


def _query(**params: str | int | None) -> str:
    q = [f"{k}={quote(str(v), safe='')}" for k, v in params.items() if v is not None]
    return "?" + "&".join(q) if q else ""


def presence_flow(
    token: str, player_id: str, retry: RetryPolicy
) -> Generator[Step, Reply, Presence]:
    req = Request("GET", f"/v1/presence/players/{_seg(player_id)}", _headers(token, False))
    resp, _ = yield from _call(req, retry)
    return _presence(resp, _object(resp, "presence"))


def room_presence_page_flow(
    token: str, room_id: str, after: str | None, limit: int | None, retry: RetryPolicy
) -> Generator[Step, Reply, RoomPresencePage]:
    req = Request(
        "GET",
        f"/v1/presence/{_seg(room_id)}" + _query(after=after, limit=limit),
        _headers(token, False),
    )
    resp, _ = yield from _call(req, retry)
    b = _object(resp, "room presence")
    what = "room presence"
    players = _field(resp, b, "players", list, what)
    return RoomPresencePage(
        room_id=_field(resp, b, "room_id", str, what),
        players=tuple(_presence(resp, p) for p in players),
        online=_field(resp, b, "online", int, what),
        linkdead=_field(resp, b, "linkdead", int, what),
        offline=_field(resp, b, "offline", int, what),
        members=_field(resp, b, "members", int, what),
        next_after=_opt_str(resp, b, "next_after", what),
    )


def room_presence_flow(
    token: str, room_id: str, limit: int | None, retry: RetryPolicy
) -> Generator[Step, Reply, RoomPresence]:
    """Every page of a room's presence, following ``next_after``."""
    players: list[Presence] = []
    after: str | None = None
    pages = 0
    while True:
        page = yield from room_presence_page_flow(token, room_id, after, limit, retry)
        pages += 1
        players.extend(page.players)
        if page.next_after is None:
            return RoomPresence(room_id, tuple(players), pages)
        if page.next_after == after or not page.players:
            raise BrokerError(
                200, "invalid_answer",
                f"room presence paging does not advance: {after!r} then {page.next_after!r}",
            )
        after = page.next_after


def presence_facts_flow(
    token: str, partition: int, after: str, limit: int | None, retry: RetryPolicy
) -> Generator[Step, Reply, PresenceFactsPage]:
    req = Request(
        "GET",
        f"/v1/presence/facts/{int(partition)}" + _query(after=after, limit=limit),
        _headers(token, False),
    )
    resp, _ = yield from _call(req, retry)
    b = _object(resp, "presence facts")
    what = "presence facts"
    facts = _field(resp, b, "facts", list, what)
    return PresenceFactsPage(
        partition=_field(resp, b, "partition", int, what),
        partitions=_field(resp, b, "partitions", int, what),
        facts=tuple(_fact(resp, f) for f in facts),
        next_after=_opt_str(resp, b, "next_after", what),
        after=after,
    )


def room_presence_events_flow(
    token: str, room_id: str, events: bool | None, retry: RetryPolicy
) -> Generator[Step, Reply, bool]:
    """``GET`` (``events=None``) or ``PUT`` ``/v1/rooms/{room}/presence_events``."""
    path = f"/v1/rooms/{_seg(room_id)}/presence_events"
    if events is None:
        req = Request("GET", path, _headers(token, False))
    else:
        req = Request("PUT", path, _headers(token, True), _json({"events": bool(events)}))
    resp, _ = yield from _call(req, retry)
    b = _object(resp, "presence_events")
    return bool(_field(resp, b, "events", bool, "presence_events"))


def login_flow(username: str, password: str) -> Generator[Step, Reply, TokenResponse]:
    """``POST /v1/auth/login``; never retried (a 429 is for the caller to honour)."""
    req = Request(
        "POST",
        "/v1/auth/login",
        _headers(None, True),
        _json({"username": username, "password": password}),
    )
    resp, _ = yield from _call(req, NO_RETRY)
    b = _body(resp)
    return TokenResponse(
        str(b["access_token"]), int(b["expires_in"]), str(b["player_id"]), str(b["token_type"])
    )


def create_user_flow(
    token: str, username: str, password: str, role: str | None
) -> Generator[Step, Reply, dict[str, Any]]:
    body: dict[str, Any] = {"username": username, "password": password}
    if role is not None:
        body["role"] = role
    req = Request("POST", "/v1/admin/users", _headers(token, True), _json(body))
    resp, _ = yield from _call(req, NO_RETRY)
    result: dict[str, Any] = _body(resp)
    return result


def ready_flow() -> Generator[Step, Reply, bool]:
    """``GET /readyz``: ``True`` when the broker can reach its engine."""
    reply = yield Send(Request("GET", "/readyz", _headers(None, False)))
    return isinstance(reply, Response) and reply.status == 200


#: A flow factory, as the shells take them.
FlowFactory = Callable[[], Flow]

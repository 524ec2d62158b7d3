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

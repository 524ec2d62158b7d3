"""The HTTP clients: :class:`BrokerClient` (sync) and :class:`AsyncBrokerClient`.

Both are thin shells around the flows of :mod:`mythos_broker._core`: they send
what a flow yields with httpx and sleep when it says so. Nothing else differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from typing import Any, TypeVar

import httpx

from . import _core
from ._core import (
    Player,
    Players,
    Presence,
    PresenceFactsPage,
    PublishResult,
    Reply,
    Request,
    Response,
    RetryPolicy,
    Room,
    RoomChange,
    RoomPresence,
    RoomPresencePage,
    Send,
    Step,
    Target,
    TokenResponse,
)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


def _response(r: httpx.Response) -> Response:
    return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


class BrokerClient:
    """A game server's synchronous client of the broker's HTTP API.

    ``token`` is a ``service`` (or ``admin``) token. Publishes carry an automatic
    idempotency ``id`` and are retried by ``retry`` (see :class:`RetryPolicy`).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retry = retry if retry is not None else RetryPolicy()
        self._own = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)

    def _send(self, req: Request) -> Response:
        r = self._http.request(
            req.method, self.base_url + req.path, headers=dict(req.headers), content=req.body
        )
        return _response(r)

    def _drive(self, flow: Generator[Step, Reply, T]) -> T:
        step = next(flow)
        while True:
            reply: Reply
            if isinstance(step, Send):
                try:
                    reply = self._send(step.request)
                except httpx.TransportError as e:
                    reply = e
            else:
                time.sleep(step.seconds)
                reply = None
            try:
                step = flow.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result

    # -- publishing

    def publish(
        self,
        target: Target,
        event_type: str,
        data: Any,
        *,
        id: str | None = None,
        room_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> PublishResult:
        """Appends an event to ``target``'s logs. ``id`` defaults to a fresh one;
        pass your own to make a publish idempotent across process restarts."""
        return self._drive(
            _core.publish_flow(
                self.token, target, event_type, data, id, room_id, retry or self.retry
            )
        )

    def publish_to_player(
        self, player: str, event_type: str, data: Any,
        *, id: str | None = None, room_id: str | None = None, retry: RetryPolicy | None = None,
    ) -> PublishResult:
        return self.publish(Player(player), event_type, data, id=id, room_id=room_id, retry=retry)

    def publish_to_players(
        self, players: Sequence[str], event_type: str, data: Any,
        *, id: str | None = None, room_id: str | None = None, retry: RetryPolicy | None = None,
    ) -> PublishResult:
        return self.publish(Players(players), event_type, data, id=id, room_id=room_id, retry=retry)

    def publish_to_room(
        self, room: str, event_type: str, data: Any,
        *, id: str | None = None, room_id: str | None = None, retry: RetryPolicy | None = None,
    ) -> PublishResult:
        """A room publish; the broker sets the envelope's ``room_id`` to ``room``."""
        return self.publish(Room(room), event_type, data, id=id, room_id=room_id, retry=retry)

    # -- rooms

    def join(self, room_id: str, player_id: str) -> RoomChange:
        return self._drive(_core.room_flow(self.token, "PUT", room_id, player_id, self.retry))

    def leave(self, room_id: str, player_id: str) -> RoomChange:
        return self._drive(_core.room_flow(self.token, "DELETE", room_id, player_id, self.retry))

    def members(self, room_id: str) -> list[str]:
        return self._drive(_core.members_flow(self.token, room_id, self.retry))

    # -- presence

    def presence(self, player_id: str) -> Presence:
        """``GET /v1/presence/players/{player}``: online, linkdead or offline."""
        return self._drive(_core.presence_flow(self.token, player_id, self.retry))

    def room_presence(self, room_id: str, *, page_size: int | None = None) -> RoomPresence:
        """Every member of ``room_id`` with their presence, following ``next_after``
        across pages of ``page_size`` (1–500; the broker's default is 100)."""
        return self._drive(_core.room_presence_flow(self.token, room_id, page_size, self.retry))

    def room_presence_page(
        self, room_id: str, *, after: str | None = None, limit: int | None = None
    ) -> RoomPresencePage:
        """One page of ``GET /v1/presence/{room}``: members after ``after``, at most
        ``limit`` (1–500, default 100)."""
        return self._drive(
            _core.room_presence_page_flow(self.token, room_id, after, limit, self.retry)
        )

    def presence_facts(
        self, partition: int = 0, after: str = "0-0", limit: int | None = 100
    ) -> PresenceFactsPage:
        """``GET /v1/presence/facts/{partition}``: facts after stream entry id
        ``after``, at most ``limit`` (1–500). Read on from ``page.resume``."""
        return self._drive(
            _core.presence_facts_flow(self.token, partition, after, limit, self.retry)
        )

    def set_room_presence_events(self, room_id: str, on: bool) -> bool:
        """``PUT /v1/rooms/{room}/presence_events``: whether the room's members get
        ``player_entered``/``player_left`` on presence changes. Returns the setting."""
        return self._drive(_core.room_presence_events_flow(self.token, room_id, on, self.retry))

    def room_presence_events(self, room_id: str) -> bool:
        """``GET /v1/rooms/{room}/presence_events``."""
        return self._drive(
            _core.room_presence_events_flow(self.token, room_id, None, self.retry)
        )

    # -- accounts and health

    def login(self, username: str, password: str) -> TokenResponse:
        return self._drive(_core.login_flow(username, password))

    def create_user(self, username: str, password: str, role: str | None = None) -> dict[str, Any]:
        """``POST /v1/admin/users`` (needs an ``admin`` token)."""
        return self._drive(_core.create_user_flow(self.token, username, password, role))

    def ready(self) -> bool:
        return self._drive(_core.ready_flow())

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncBrokerClient:
    """The asyncio twin of :class:`BrokerClient` (the same flows, awaited)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retry = retry if retry is not None else RetryPolicy()
        self._own = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def _send(self, req: Request) -> Response:
        r = await self._http.request(
            req.method, self.base_url + req.path, headers=dict(req.headers), content=req.body
        )
        return _response(r)

    async def _drive(self, flow: Generator[Step, Reply, T]) -> T:
        step = next(flow)
        while True:
            reply: Reply
            if isinstance(step, Send):
                try:
                    reply = await self._send(step.request)
                except httpx.TransportError as e:
                    reply = e
            else:
                await asyncio.sleep(step.seconds)
                reply = None
            try:
                step = flow.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result

    async def publish(
        self,
        target: Target,
        event_type: str,
        data: Any,
        *,
        id: str | None = None,
        room_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> PublishResult:
        return await self._drive(
            _core.publish_flow(
                self.token, target, event_type, data, id, room_id, retry or self.retry
            )
        )

    async def publish_to_player(
        self, player: str, event_type: str, data: Any,
        *, id: str | None = None, room_id: str | None = None, retry: RetryPolicy | None = None,
    ) -> PublishResult:
        return await self.publish(Player(player), event_type, data, id=id, room_id=room_id, retry=retry)

    async def publish_to_players(
        self, players: Sequence[str], event_type: str, data: Any,
        *, id: str | None = None, room_id: str | None = None, retry: RetryPolicy | None = None,
    ) -> PublishResult:
        return await self.publish(Players(players), event_type, data, id=id, room_id=room_id, retry=retry)

    async def publish_to_room(
        self, room: str, event_type: str, data: Any,
        *, id: str | None = None, room_id: str | None = None, retry: RetryPolicy | None = None,
    ) -> PublishResult:
        """A room publish; the broker sets the envelope's ``room_id`` to ``room``."""
        return await self.publish(Room(room), event_type, data, id=id, room_id=room_id, retry=retry)

    async def join(self, room_id: str, player_id: str) -> RoomChange:
        return await self._drive(_core.room_flow(self.token, "PUT", room_id, player_id, self.retry))

    async def leave(self, room_id: str, player_id: str) -> RoomChange:
        return await self._drive(
            _core.room_flow(self.token, "DELETE", room_id, player_id, self.retry)
        )

    async def members(self, room_id: str) -> list[str]:
        return await self._drive(_core.members_flow(self.token, room_id, self.retry))

    # -- presence

    async def presence(self, player_id: str) -> Presence:
        return await self._drive(_core.presence_flow(self.token, player_id, self.retry))

    async def room_presence(
        self, room_id: str, *, page_size: int | None = None
    ) -> RoomPresence:
        return await self._drive(
            _core.room_presence_flow(self.token, room_id, page_size, self.retry)
        )

    async def room_presence_page(
        self, room_id: str, *, after: str | None = None, limit: int | None = None
    ) -> RoomPresencePage:
        return await self._drive(
            _core.room_presence_page_flow(self.token, room_id, after, limit, self.retry)
        )

    async def presence_facts(
        self, partition: int = 0, after: str = "0-0", limit: int | None = 100
    ) -> PresenceFactsPage:
        return await self._drive(
            _core.presence_facts_flow(self.token, partition, after, limit, self.retry)
        )

    async def set_room_presence_events(self, room_id: str, on: bool) -> bool:
        return await self._drive(
            _core.room_presence_events_flow(self.token, room_id, on, self.retry)
        )

    async def room_presence_events(self, room_id: str) -> bool:
        return await self._drive(
            _core.room_presence_events_flow(self.token, room_id, None, self.retry)
        )

    async def login(self, username: str, password: str) -> TokenResponse:
        return await self._drive(_core.login_flow(username, password))

    async def create_user(
        self, username: str, password: str, role: str | None = None
    ) -> dict[str, Any]:
        return await self._drive(_core.create_user_flow(self.token, username, password, role))

    async def ready(self) -> bool:
        return await self._drive(_core.ready_flow())

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

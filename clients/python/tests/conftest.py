"""Shared helpers of the suite. The broker, Redis and tokens come from the package's
own pytest plugin (mythos_broker.pytest_plugin), as a game server's tests get them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest_plugins = ["pytester"]
from websockets.sync.client import ClientConnection, connect

PATIENCE = 10.0


class WsPlayer:
    """A player's WebSocket (the `websockets` package): frames as dicts."""

    def __init__(self, ws_url: str, token: str, since: int | None = None) -> None:
        q = f"?token={token}" + (f"&since={since}" if since is not None else "")
        # entered as a context manager (websockets >= 15 deprecates a bare connect())
        self.ws: ClientConnection = connect(ws_url + "/v1/ws" + q, open_timeout=PATIENCE).__enter__()
        self.welcome = self.recv()
        assert self.welcome["type"] == "welcome", self.welcome
        self._n = 0

    def recv(self, timeout: float = PATIENCE) -> dict[str, Any]:
        frame = json.loads(self.ws.recv(timeout=timeout))
        assert isinstance(frame, dict)
        return frame

    def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = PATIENCE) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for a frame")
            f = self.recv(left)
            if pred(f):
                return f

    def events(self, n: int, event_type: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            f = self.until(lambda f: f["type"] == "event")
            if event_type is None or f["event_type"] == event_type:
                out.append(f)
        return out

    def command(self, command: str, *args: str, id: str | None = None) -> str:
        self._n += 1
        cid = id or f"c{self._n}"
        self.ws.send(json.dumps({"type": "command", "id": cid, "command": command, "args": list(args)}))
        self.until(lambda f: f["type"] == "command_accepted" and f["id"] == cid)
        return cid

    def chat(self, message: str, channel: str = "say", id: str | None = None) -> str:
        self._n += 1
        cid = id or f"m{self._n}"
        self.ws.send(json.dumps({"type": "chat", "id": cid, "channel": channel, "message": message}))
        self.until(lambda f: f["type"] == "command_accepted" and f["id"] == cid)
        return cid

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def ws_player() -> Any:
    opened: list[WsPlayer] = []

    def open_(ws_url: str, token: str, since: int | None = None) -> WsPlayer:
        p = WsPlayer(ws_url, token, since)
        opened.append(p)
        return p

    yield open_
    for p in opened:
        p.close()


def eventually(pred: Callable[[], bool], timeout: float = PATIENCE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)

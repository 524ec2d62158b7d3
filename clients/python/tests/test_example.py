"""Smoke test of examples/python-fastapi: the echo world run by uvicorn against a real
broker on Redis; players talk to it over WebSockets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import eventually
from mythos_broker.testing import TEST_SECRET, BrokerProcess, RedisServer, free_port

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python-fastapi"


def test_echo_world(mythos_broker_redis: BrokerProcess, mythos_redis: RedisServer, ws_player: Any) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MYTHOS_BROKER_URL": mythos_broker_redis.base_url,
        "MYTHOS_REDIS_URL": mythos_redis.url,
        "MYTHOS_JWT_SECRET": TEST_SECRET,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"],
        cwd=EXAMPLE, env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "the example exited"
            assert time.monotonic() < deadline, "the example did not start"
            time.sleep(0.1)
        b = mythos_broker_redis
        alice = ws_player(b.ws_url, b.token("alice"))
        bob = ws_player(b.ws_url, b.token("bob"))
        alice.command("look", id="a1")
        r = alice.events(1, "command_response")[0]
        assert r["data"] == {"command_id": "a1", "text": "lobby: alice"}
        bob.command("look", id="b1")
        assert bob.events(1, "command_response")[0]["data"]["text"] == "lobby: alice, bob"
        alice.chat("hello, bob")
        said = bob.events(1, "chat_message")[0]
        assert said["data"] == {"channel": "say", "from": "alice", "message": "hello, bob"}
        assert said["room_id"] == "lobby"
        alice.command("dance", "wildly", id="a2")
        echo = alice.until(lambda f: f["type"] == "event" and f["event_type"] == "command_response"
                           and f["data"]["command_id"] == "a2")
        assert echo["data"]["text"] == "echo: dance wildly"
        assert httpx.get(base + "/rooms/lobby").json() == {"room": "lobby", "members": ["alice", "bob"]}
        alice.command("who", id="a3")
        who = alice.until(lambda f: f["type"] == "event" and f["event_type"] == "command_response"
                          and f["data"]["command_id"] == "a3")
        assert who["data"]["text"] == "lobby: alice (online), bob (online)"
        bob.close()  # the broker's default grace: bob is link-dead, not yet offline
        eventually(lambda: httpx.get(base + "/rooms/lobby/who").json()["players"]["bob"] == "linkdead",
                   what="bob linkdead")
        assert httpx.get(base + "/rooms/lobby/who").json() == {
            "room": "lobby", "online": 1, "players": {"alice": "online", "bob": "linkdead"}}
        r = mythos_redis.client()
        eventually(lambda: r.xpending("mythos:commands", "echo-world")["pending"] == 0, what="acks")
        assert httpx.get(base + "/healthz").json()["handled"] == 5
    finally:
        server.terminate()
        server.wait(10)

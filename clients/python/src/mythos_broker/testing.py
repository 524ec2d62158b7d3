"""Test helpers: the real broker binary and a private ``redis-server`` as child
processes, plus recordings (``mythos-broker export`` / ``replay``) and an SSE reader.

The pytest plugin (:mod:`mythos_broker.pytest_plugin`) wraps these in fixtures; they
work without pytest too. Nothing here is a fake: every call crosses a socket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from .client import AsyncBrokerClient, BrokerClient
from ._core import RetryPolicy
from .tokens import Role, mint_token

#: The secret test brokers are started with (>= 16 bytes, as the broker requires).
TEST_SECRET = "mythos-python-test-secret-0123456789"
#: How long a helper waits for something that should happen.
PATIENCE = 20.0


class BrokerBinaryMissing(RuntimeError):
    pass


def find_broker_binary() -> Path:
    """``$MYTHOS_BROKER_BIN``, else ``<repo>/target/debug/mythos-broker`` (the repository
    that holds this package, when it is installed from a checkout)."""
    env = os.environ.get("MYTHOS_BROKER_BIN")
    if env:
        p = Path(env)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise BrokerBinaryMissing(
                f"MYTHOS_BROKER_BIN={env} is not an executable file; build the broker "
                "(`cargo build` in the repository) or point MYTHOS_BROKER_BIN at mythos-broker"
            )
        return p
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "target" / "debug" / "mythos-broker"
        if (parent / "Cargo.toml").is_file():
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
            raise BrokerBinaryMissing(
                f"no broker binary at {candidate}: run `cargo build` in {parent}, "
                "or set MYTHOS_BROKER_BIN to a mythos-broker binary"
            )
    raise BrokerBinaryMissing(
        "cannot find the mythos-broker binary: set MYTHOS_BROKER_BIN to its path "
        "(this package is not installed from a checkout of the repository)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """PATH and ``extra`` only: nothing the developer exported (MYTHOS_REDIS_URL, ...)
    reaches a test broker."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MYTHOS_LOG": "warn"}
    env.update(extra)
    return env


class RedisServer:
    """A ``redis-server`` of its own on a free port of 127.0.0.1 (never 6379), no
    persistence; :meth:`stop` and :meth:`start` again keep the port."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server); the Redis "
                "fixtures start their own on a free port"
            )
        self.binary = found
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mythos-py-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Recording:
    """A recording as ``mythos-broker export --player`` writes it: event envelopes,
    one JSON object a line, one player's, in sequence order."""

    events: list[dict[str, Any]]

    @staticmethod
    def parse(text: str) -> Recording:
        events: list[dict[str, Any]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
            except ValueError as e:
                raise ValueError(f"line {n}: not JSON ({e})") from None
            if not isinstance(v, dict) or not isinstance(v.get("event_type"), str):
                raise ValueError(f"line {n}: not an event envelope")
            if not isinstance(v.get("sequence_number"), int):
                raise ValueError(f"line {n}: `sequence_number` must be an integer")
            if events and v["sequence_number"] <= events[-1]["sequence_number"]:
                raise ValueError(f"line {n}: sequence number does not increase")
            events.append(v)
        return Recording(events)

    @staticmethod
    def from_file(path: str | Path) -> Recording:
        return Recording.parse(Path(path).read_text("utf-8"))

    def view(self) -> list[tuple[str, Any]]:
        """What a client must see: ``(event_type, data)`` in order."""
        return [(e["event_type"], e["data"]) for e in self.events]

    def dumps(self) -> str:
        return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in self.events)


class BrokerProcess:
    """The real ``mythos-broker`` binary on a free port of 127.0.0.1.

    The embedded engine unless ``redis_url`` is given; ``env`` adds settings
    (``{"MYTHOS_MAX_EVENT_BYTES": "64"}``). The environment is otherwise cleared.
    """

    def __init__(
        self,
        binary: str | Path | None = None,
        *,
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
        secret: str = TEST_SECRET,
    ) -> None:
        self.binary = Path(binary) if binary is not None else find_broker_binary()
        self.secret = secret
        self.redis_url = redis_url
        self.env: dict[str, str] = {"MYTHOS_JWT_SECRET": secret, "MYTHOS_BIND": "127.0.0.1:0"}
        if redis_url is not None:
            self.env["MYTHOS_REDIS_URL"] = redis_url
        self.env.update(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._stdout_lines: list[str] = []

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):]

    def start(self) -> BrokerProcess:
        self.proc = subprocess.Popen(
            [str(self.binary)],
            env=_clean_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        found = threading.Event()
        proc = self.proc

        def drain() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self._stdout_lines.append(line)
                if "listening on http://" in line:
                    self.base_url = line.split("listening on ", 1)[1].split()[0]
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + PATIENCE
        while not found.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.binary} did not start (exit {proc.returncode}): {self.stderr()}"
                )
        return self

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; returns the exit code."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        return p.returncode

    # -- tokens and clients

    def token(self, sub: str, role: Role = "player", ttl: float = 3600.0) -> str:
        return mint_token(self.secret, sub, role, ttl=ttl)

    @property
    def service_token(self) -> str:
        return self.token("game", "service")

    @property
    def admin_token(self) -> str:
        return self.token("admin", "admin")

    def client(self, token: str | None = None, retry: RetryPolicy | None = None) -> BrokerClient:
        return BrokerClient(self.base_url, token or self.service_token, retry=retry)

    def async_client(
        self, token: str | None = None, retry: RetryPolicy | None = None
    ) -> AsyncBrokerClient:
        return AsyncBrokerClient(self.base_url, token or self.service_token, retry=retry)

    # -- the tools (the same binary's subcommands, against this broker by --url)

    def _tool(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            env=_clean_env({}),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def replay(
        self, recording: str | Path | Recording, to_player: str, speed: str = "max"
    ) -> str:
        """``mythos-broker replay FILE --to-player Q --speed S --url ...``; returns its
        summary line, raises ``RuntimeError`` with its stderr when it fails."""
        tmp: str | None = None
        if isinstance(recording, Recording):
            fd, tmp = tempfile.mkstemp(suffix=".jsonl")
            with os.fdopen(fd, "w") as f:
                f.write(recording.dumps())
            path = tmp
        else:
            path = str(recording)
        try:
            out = self._tool(
                ["replay", path, "--to-player", to_player, "--speed", speed,
                 "--url", self.base_url, "--token", self.service_token]
            )
        finally:
            if tmp is not None:
                os.unlink(tmp)
        if out.returncode != 0:
            raise RuntimeError(f"replay exited {out.returncode}: {out.stderr.strip()}")
        return (out.stdout + out.stderr).strip()

    def export_player(self, player: str) -> Recording:
        """``mythos-broker export --player P --url ...``: the player's retained events."""
        out = self._tool(
            ["export", "--player", player, "--url", self.base_url, "--token", self.admin_token]
        )
        if out.returncode != 0:
            raise RuntimeError(f"export exited {out.returncode}: {out.stderr.strip()}")
        return Recording.parse(out.stdout)

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sse_events(
    base_url: str,
    token: str,
    count: int,
    *,
    last_event_id: int | None = None,
    timeout: float = PATIENCE,
) -> list[dict[str, Any]]:
    """Reads ``count`` events from ``GET /v1/events`` (httpx streaming) and returns
    their envelopes; markers (``resync_required``) and comments are skipped."""
    headers = {"authorization": f"Bearer {token}", "accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    out: list[dict[str, Any]] = []
    with httpx.stream(
        "GET", base_url + "/v1/events", headers=headers, timeout=httpx.Timeout(timeout)
    ) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"SSE answered {r.status_code}: {r.text}")
        for event in _sse_parse(r.iter_lines()):
            if event.get("id") is None:
                continue
            out.append(json.loads(event["data"]))
            if len(out) >= count:
                break
    return out


def _sse_parse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    cur: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in cur:
                yield cur
            cur = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            cur[name] = cur[name] + "\n" + value if name == "data" and name in cur else value

"""Typed errors of the broker's HTTP API.

Every error the broker answers is ``{"error": {"code", "message"}}`` with an HTTP
status (docs/protocol.md, "Error codes"). :func:`error_from_response` maps one onto
the class below that a caller can catch; the ``code`` and ``message`` are always kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


class MythosError(Exception):
    """Base of every error this library raises."""


class TransportError(MythosError):
    """The broker could not be reached (connection refused, reset, timed out),
    and retries, if any, did not help. For a publish the event may exist: a retry
    with the same ``id`` appends nothing twice."""


class BrokerError(MythosError):
    """An error answer of the broker: HTTP ``status``, contract ``code``, ``message``."""

    #: Whether the same request may succeed later (a publish retry is safe by ``id``).
    retryable: bool = False

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Unauthorized(BrokerError):
    """``401 unauthorized`` / ``invalid_credentials``: no token, or a malformed,
    expired or badly signed one. :class:`Forbidden` (403) is a subclass."""


class Forbidden(Unauthorized):
    """``403 forbidden``: a valid token with the wrong role (or another player's feed)."""


class BadRequest(BrokerError):
    """``400``: the request is wrong (``invalid_json``, ``invalid_request``,
    ``invalid_target``, ``invalid_event_type``, ...). Retrying cannot help."""


class TooLarge(BadRequest):
    """``413 too_large``: ``data`` over ``MYTHOS_MAX_EVENT_BYTES``, or the body over its limit."""


class RateLimited(BrokerError):
    """``429 rate_limited`` / ``too_many_connections``. ``retry_after`` is in seconds
    when the broker said how long to wait (a ``Retry-After`` header or
    ``retry_after_ms`` in the body), else ``None``."""

    retryable = True

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


class Unavailable(BrokerError):
    """``503 engine_unavailable``: the broker cannot reach its event store. Retry."""

    retryable = True


class NotReplicated(BrokerError):
    """``503 not_replicated``: ``MYTHOS_REDIS_WAIT_REPLICAS`` were not confirmed in time.
    The event may exist but is invisible until a retry with the same ``id`` confirms it."""

    retryable = True


class ServerError(BrokerError):
    """Another 5xx (or a proxy's 502/504, which are retryable)."""


def _retry_after(headers: Mapping[str, str], body: Mapping[str, object]) -> float | None:
    raw = headers.get("retry-after")
    if raw is not None:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass  # an HTTP date: not worth parsing, fall back to the body
    ms = body.get("retry_after_ms")
    if isinstance(ms, (int, float)) and not isinstance(ms, bool):
        return max(0.0, float(ms) / 1000.0)
    return None


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> BrokerError:
    """The typed error for a non-2xx answer. ``headers`` keys are lower case."""
    code = "unknown"
    message = ""
    err: Mapping[str, object] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        code = str(err.get("code", code))
        message = str(err.get("message", ""))
    else:
        message = body[:200].decode("utf-8", "replace")
    if status in (401,):
        return Unauthorized(status, code, message)
    if status == 403:
        return Forbidden(status, code, message)
    if status == 413:
        return TooLarge(status, code, message)
    if status == 429:
        return RateLimited(status, code, message, _retry_after(headers, err))
    if status == 503 and code == "not_replicated":
        return NotReplicated(status, code, message)
    if status == 503:
        return Unavailable(status, code, message)
    if 400 <= status < 500:
        return BadRequest(status, code, message)
    e = ServerError(status, code, message)
    e.retryable = status in (502, 504)
    return e

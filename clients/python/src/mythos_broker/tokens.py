"""Minting broker tokens, for tests and development.

HS256 JWTs signed with the broker's ``MYTHOS_JWT_SECRET``, with the claims the broker
reads (``src/auth.rs``): ``sub`` (the player id, ``[A-Za-z0-9_-]{1,64}``), ``exp``
(required, no leeway), ``iat`` and ``role``. In production players get their tokens
from ``POST /v1/auth/login``; a game server may mint its own ``service`` token.
"""

from __future__ import annotations

import time
from typing import Literal

import jwt

Role = Literal["player", "service", "admin"]
ROLES: tuple[Role, ...] = ("player", "service", "admin")


def mint_token(
    secret: str | bytes,
    sub: str,
    role: Role = "player",
    *,
    ttl: float = 3600.0,
    now: float | None = None,
) -> str:
    """An HS256 token for ``sub`` with ``role``, valid for ``ttl`` seconds (PyJWT)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    iat = int(time.time() if now is None else now)
    claims = {"sub": sub, "iat": iat, "exp": iat + max(1, int(ttl)), "role": role}
    return jwt.encode(claims, secret, algorithm="HS256")

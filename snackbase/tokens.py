"""Tokens: the access JWT (HS256) and opaque secrets (refresh, invitation, reset, verification).

Opaque secrets are 256 random bits; only their SHA-256 is stored, so a copy of the database does not
let anyone log in. They are looked up by that digest through a unique index: the lookup's timing can
only reveal digest prefixes, never the secret (a preimage of SHA-256 is out of reach).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from functools import lru_cache
from typing import Any

import jwt

from snackbase.config import Settings

ISSUER = "snackbase"
ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["sub", "account_id", "role", "sid", "iat", "exp", "iss"]
# Refresh and one-time tokens carry a prefix so leaked ones are recognizable (secret scanners, logs).
REFRESH_PREFIX = "sbr_"
ONE_TIME_PREFIX = "sbt_"


class InvalidToken(Exception):
    """A bearer token that is malformed, forged, expired, or signed with another algorithm or key."""


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    # Encoded once per secret: the token check is on the path of every authenticated request.
    return secret.encode("utf-8")


_jwt = jwt.PyJWT()


def mint_access_token(
    settings: Settings, *, user_id: str, account_id: str, role: str, session_id: str, ttl_s: int | None = None
) -> str:
    now = int(time.time())
    ttl = ttl_s if ttl_s is not None else settings.access_token_expire_minutes * 60
    claims = {
        "sub": user_id,
        "account_id": account_id,
        "role": role,
        "sid": session_id,
        "iat": now,
        "exp": now + ttl,
        "iss": ISSUER,
    }
    return _jwt.encode(claims, _key(settings.secret_key), algorithm=ALGORITHM)


def decode_access_token(settings: Settings, token: str) -> dict[str, Any]:
    """The verified claims; the algorithm is pinned to HS256, so `none` and RS/ES tokens are refused."""
    try:
        claims = _jwt.decode(
            token,
            _key(settings.secret_key),
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": _REQUIRED_CLAIMS},
            leeway=5,
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(type(exc).__name__) from None
    if not all(isinstance(claims[name], str) for name in ("sub", "account_id", "role", "sid")):
        raise InvalidToken("claim types")
    return claims


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def new_one_time_token() -> str:
    return ONE_TIME_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

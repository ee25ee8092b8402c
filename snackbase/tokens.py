"""Tokens: the access JWT (HS256) and opaque secrets (refresh, invitation, reset, verification).

Opaque secrets are 256 random bits; only their SHA-256 is stored, so a copy of the database does not
let anyone log in. They are looked up by that digest through a unique index: the lookup's timing can
only reveal digest prefixes, never the secret (a preimage of SHA-256 is out of reach).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from functools import lru_cache
from typing import Any

import msgspec

from snackbase.config import Settings

ISSUER = "snackbase"
ALGORITHM = "HS256"
# Refresh and one-time tokens carry a prefix so leaked ones are recognizable (secret scanners, logs).
REFRESH_PREFIX = "sbr_"
ONE_TIME_PREFIX = "sbt_"


class InvalidToken(Exception):
    """A bearer token that is malformed, forged, expired, or signed with another algorithm or key."""


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    # Encoded once per secret: the token check is on the path of every authenticated request.
    return secret.encode("utf-8")


@lru_cache(maxsize=1)
def _jwt() -> Any:
    # Imported on first use: pyjwt pulls in urllib.request for its JWKS client, ~3 MiB of idle memory.
    import jwt

    return jwt.PyJWT()


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
    return str(_jwt().encode(claims, _key(settings.secret_key), algorithm=ALGORITHM))


class _Claims(msgspec.Struct):
    sub: str
    account_id: str
    role: str
    sid: str
    iat: int
    exp: int
    iss: str


class _Header(msgspec.Struct):
    alg: str


_claims_decoder = msgspec.json.Decoder(_Claims)
_header_decoder = msgspec.json.Decoder(_Header)
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]{2,512}\.[A-Za-z0-9_-]{2,2048}\.[A-Za-z0-9_-]{43}")
LEEWAY_S = 5


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode_access_token(settings: Settings, token: str) -> dict[str, Any]:
    """The verified claims of an HS256 access token; anything else raises InvalidToken.

    Verified here rather than with pyjwt's decode (pyjwt still mints): this runs on every authenticated
    request and costs ~8 us instead of ~35 us. The algorithm is pinned (`none`, RS/ES/PS and other HS
    sizes are refused before any signature work), the MAC is compared in constant time, and every claim
    of SPEC section 4 is required with its type.
    """
    if not _JWT_SHAPE.fullmatch(token):
        raise InvalidToken("shape")
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        if _header_decoder.decode(_b64(header_b64)).alg != ALGORITHM:
            raise InvalidToken("algorithm")
        expected = hmac.new(
            _key(settings.secret_key), f"{header_b64}.{payload_b64}".encode(), "sha256"
        ).digest()
        if not hmac.compare_digest(expected, _b64(signature_b64)):
            raise InvalidToken("signature")
        claims = _claims_decoder.decode(_b64(payload_b64))
    except (ValueError, msgspec.DecodeError):  # binascii.Error is a ValueError
        raise InvalidToken("malformed") from None
    now = time.time()
    if claims.iss != ISSUER or claims.exp <= now - LEEWAY_S or claims.iat > now + LEEWAY_S:
        raise InvalidToken("claims")
    return msgspec.structs.asdict(claims)


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def new_one_time_token() -> str:
    return ONE_TIME_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

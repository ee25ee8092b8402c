"""Record versions for optimistic concurrency: the ETag of every record read, `If-Match` on writes
(412 when stale), `If-None-Match` on reads (304).

A version is a keyed BLAKE2b digest of the stored record (every field, unmasked, with `updated_at`),
so any change — even two within one millisecond — gives a new ETag. Keyed with the server's secret,
because a plain hash of a record with a masked field (an SSN) would let a caller who sees every other
field recover the hidden value by hashing candidates. Every worker process of one data directory has
the same secret, hence the same ETags.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import msgspec

from snackbase.errors import ApiError

_encoder = msgspec.json.Encoder(order="sorted")
_key: bytes = os.urandom(32)  # replaced at start by `set_key` (the app's secret)


def set_key(secret: str) -> None:
    global _key
    _key = hashlib.blake2b(secret.encode(), digest_size=32, person=b"etag").digest()


def etag(record: dict[str, Any]) -> str:
    """The strong ETag (quoted) of a stored record in its JSON form."""
    return '"' + hashlib.blake2b(_encoder.encode(record), key=_key, digest_size=16).hexdigest() + '"'


def matches(header: str, tag: str) -> bool:
    """Whether an If-Match / If-None-Match header names `tag` (a list, `*`, weak forms compare too)."""
    names = [n.strip().removeprefix("W/") for n in header.split(",")]
    return "*" in names or tag in names


def check_if_match(if_match: str | None, record: dict[str, Any]) -> None:
    """412 `precondition_failed` when the write's If-Match does not name the record as stored now
    (called inside the write's unit of work, on the row read under the write lock)."""
    if if_match is not None and not matches(if_match, etag(record)):
        raise ApiError(
            412,
            "precondition_failed",
            "The record was changed since you read it (If-Match does not match its ETag); "
            "read it again and retry.",
        )

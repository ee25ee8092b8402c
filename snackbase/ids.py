"""Identifiers: UUIDv7 strings for everything, `XX####` for accounts (SPEC section 3)."""

from __future__ import annotations

import os
import secrets
import string
import time

SYSTEM_ACCOUNT_ID = "SY0000"
SYSTEM_ACCOUNT_SLUG = "system"
# Letters for account prefixes; "SY" is reserved for the system account.
_LETTERS = string.ascii_uppercase


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_account_id() -> str:
    """A random `XX####` id that never uses the reserved `SY` prefix."""
    while True:
        prefix = secrets.choice(_LETTERS) + secrets.choice(_LETTERS)
        if prefix != "SY":
            return f"{prefix}{secrets.randbelow(10_000):04d}"

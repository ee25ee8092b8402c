"""Identifiers: UUIDv7 strings for everything, `XX####` for accounts (SPEC section 3)."""

from __future__ import annotations

import os
import secrets
import string
import threading
import time

SYSTEM_ACCOUNT_ID = "SY0000"
SYSTEM_ACCOUNT_SLUG = "system"
# Letters for account prefixes; "SY" is reserved for the system account.
_LETTERS = string.ascii_uppercase


class _RandomPool:
    """Bytes from os.urandom, read 4 KiB at a time: one getrandom call per id was ~2% of a create.

    Same source as `secrets`; for ids and request ids, never for tokens or keys (those call `secrets`).
    Emptied in a forked child, which must not hand out its parent's bytes again."""

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._pool):
                self._pool, self._at = os.urandom(max(self.SIZE, n)), 0
            chunk = self._pool[self._at : self._at + n]
            self._at += n
            return chunk


random_bytes = _RandomPool().take


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(random_bytes(10), "big")
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

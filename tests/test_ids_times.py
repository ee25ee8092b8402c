"""Ids and timestamps: the formats of SPEC section 3 and the caches that make them cheap."""

from __future__ import annotations

import os
import re
import time
import uuid
import warnings

import pytest

from snackbase import ids, times

UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_uuid7_format_order_and_uniqueness() -> None:
    made = [ids.uuid7() for _ in range(5_000)]  # crosses the 4 KiB random pool several times
    assert all(UUID7.fullmatch(u) for u in made)
    assert len(set(made)) == len(made)
    assert all(uuid.UUID(u).version == 7 for u in made[:10])
    # Time-ordered at millisecond resolution: the 48-bit prefix never goes back.
    stamps = [int(u.replace("-", "")[:12], 16) for u in made]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time() * 1000) < 5_000


def test_random_pool_never_repeats_bytes_across_refills() -> None:
    chunks = [ids.random_bytes(10) for _ in range(1_000)]  # ~2.5 pools of 4 KiB
    assert len(set(chunks)) == len(chunks)
    assert len(ids.random_bytes(5_000)) == 5_000  # more than a pool at once


def test_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    ids.random_bytes(1)  # the parent has a filled pool
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about forking a process that has threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its next bytes, then leave without running pytest's teardown
        os.write(write, ids.random_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert child != ids.random_bytes(16)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (1_795_783_530_999, "2026-11-27T12:45:30.999Z"),
        (1_795_783_531_000, "2026-11-27T12:45:31.000Z"),  # the cached second moves on
        (1_795_783_531_001, "2026-11-27T12:45:31.001Z"),
        (1_795_783_530_500, "2026-11-27T12:45:30.500Z"),  # the clock stepped back: formatted again
    ],
)
def test_now_iso_across_second_boundaries(monkeypatch: pytest.MonkeyPatch, ms: int, text: str) -> None:
    monkeypatch.setattr(times.time, "time_ns", lambda: ms * 1_000_000)
    assert times.now_iso() == text


def test_now_iso_matches_the_clock() -> None:
    before = time.time()
    moment = times.parse_ts(times.now_iso()).timestamp()
    assert before - 0.001 <= moment <= time.time()

"""Passwords: the policy (length, common list, email local part) and Argon2id hashing off the event loop.

Argon2id parameters are OWASP's minimum recommendation (m=19 MiB, t=2, p=1): memory-hard enough that
GPU guessing is expensive, yet one verification costs ~20-40 ms of one core, so a small server can still
serve logins. Hashing runs on a dedicated two-thread executor: at most two hashes run at once, so a
burst of logins queues instead of starving the event loop or exhausting memory (19 MiB each).
"""

from __future__ import annotations

import asyncio
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

import msgspec

from snackbase.errors import ApiError, FieldErrors, field_error

if TYPE_CHECKING:
    from argon2 import PasswordHasher

MAX_LENGTH = 128
# Beyond this many queued hash jobs the server answers 503 instead of queueing without bound.
MAX_PENDING = 64


class Argon2Params(msgspec.Struct, frozen=True):
    memory_kib: int
    time_cost: int
    parallelism: int


PRODUCTION_PARAMS = Argon2Params(memory_kib=19_456, time_cost=2, parallelism=1)
# Only under SNACKBASE_ENVIRONMENT=testing: the suite hashes hundreds of passwords.
TESTING_PARAMS = Argon2Params(memory_kib=1_024, time_cost=1, parallelism=1)

_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sb-argon2")
_pending = 0


def params_for(environment: str) -> Argon2Params:
    return TESTING_PARAMS if environment == "testing" else PRODUCTION_PARAMS


@cache
def hasher(params: Argon2Params) -> PasswordHasher:
    # argon2 (with cffi) is imported on the first password operation, not at start: an idle server
    # that nobody logs in to does not carry it.
    from argon2 import PasswordHasher, Type

    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


@cache
def dummy_hash(params: Argon2Params) -> str:
    """A hash of a random value, verified against for unknown users so failures take the same time."""
    return hasher(params).hash("dummy-password-never-matches-\u2603")


def normalize(password: str) -> str:
    """NFC, so the same password typed on two keyboards (composed é vs e + accent) hashes the same."""
    return unicodedata.normalize("NFC", password)


async def _run(fn, *args):  # type: ignore[no-untyped-def]
    global _pending
    if _pending >= MAX_PENDING:
        raise ApiError(503, message="The server is busy; try again shortly.", headers={"retry-after": "1"})
    _pending += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)
    finally:
        _pending -= 1


def _hash_sync(params: Argon2Params, password: str) -> str:
    return hasher(params).hash(normalize(password))


def _verify_sync(params: Argon2Params, stored: str | None, password: str) -> tuple[bool, bool]:
    """(matches, needs_rehash); an unknown user (stored None) verifies against the dummy hash.

    The dummy hash is made on the first verification of any kind (then cached), so the first login
    after a start costs the same whether the user exists or not."""
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    ph, dummy = hasher(params), dummy_hash(params)
    try:
        ph.verify(stored or dummy, normalize(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, False
    if stored is None:
        return False, False
    return True, ph.check_needs_rehash(stored)


async def hash_password(params: Argon2Params, password: str) -> str:
    return str(await _run(_hash_sync, params, password))


async def verify_password(params: Argon2Params, stored: str | None, password: str) -> tuple[bool, bool]:
    matches, rehash = await _run(_verify_sync, params, stored, password)
    return bool(matches), bool(rehash)


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("snackbase").joinpath("data/common_passwords.txt").read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line.casefold() for line in lines if line and not line.startswith("#"))


def policy_errors(password: str, email: str, min_length: int, field: str = "password") -> FieldErrors:
    """The password policy (SPEC section 4); an empty dict when the password is acceptable."""
    length = len(normalize(password))
    if length < min_length:
        return field_error(field, "password_too_short", f"Must be at least {min_length} characters.")
    if length > MAX_LENGTH:
        return field_error(field, "password_too_long", f"Must be at most {MAX_LENGTH} characters.")
    folded = normalize(password).casefold()
    if folded in common_passwords() or _repeats(folded):
        return field_error(field, "password_too_common", "This password is too common; choose another.")
    local = email.split("@", 1)[0].casefold()
    if len(local) >= 3 and local in folded:
        return field_error(field, "password_contains_email", "Must not contain your email address.")
    return {}


def _repeats(folded: str) -> bool:
    """A password that is one short pattern repeated (aaaaaaaaaaaa, abcabcabcabc) is not a password."""
    for size in range(1, 4):
        unit = folded[:size]
        if unit * (len(folded) // size) + unit[: len(folded) % size] == folded:
            return True
    return False


def check_policy(password: str, email: str, min_length: int, field: str = "password") -> None:
    errors = policy_errors(password, email, min_length, field)
    if errors:
        raise ApiError(400, "validation_failed", "The password does not meet the password policy.", errors)

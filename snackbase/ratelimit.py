"""Rate limits per route class (reads, writes, auth, uploads): per user for signed-in callers, per client
address for anonymous ones, so many users behind one NAT do not share a budget and a token used from
many addresses does not get many budgets.

Each (class, caller) has a token bucket of COUNT requests refilled over SECONDS (a burst of COUNT is
allowed, then COUNT per SECONDS). Over it: 429 `rate_limited` in the error envelope with Retry-After.
Buckets live in the process's memory: with `--workers N` each process counts its own requests, so a
caller may get up to N times the budget. Login throttling (failed passwords, in SQL) is separate and
always on.

Also here: the client address behind a trusted proxy (SNACKBASE_TRUSTED_PROXIES).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from starlette.types import Scope

from snackbase.config import Settings
from snackbase.errors import ApiError

CLASSES = ("reads", "writes", "auth", "uploads")
_READ_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
MAX_BUCKETS = 100_000


def parse_limit(text: str) -> tuple[float, float] | None:
    """ "600/60" → (capacity 600, refill 10 per second); empty → None (no limit)."""
    if not text.strip():
        return None
    count, seconds = (int(p) for p in text.strip().split("/"))
    return float(count), count / seconds


def limits_from(settings: Settings) -> dict[str, tuple[float, float]]:
    limits = {}
    for name in CLASSES:
        limit = parse_limit(getattr(settings, f"rate_limit_{name}"))
        if limit is not None:
            limits[name] = limit
    return limits


def route_class(scope: Scope, auth_prefix: str) -> str:
    path: str = scope["path"]
    if path.startswith(auth_prefix):
        return "auth"
    method: str = scope["method"]
    if method in _READ_METHODS:
        return "reads"
    for name, value in scope["headers"]:
        if name == b"content-type" and value.lower().startswith(b"multipart/"):
            return "uploads"
    return "writes"


class RateLimiter:
    def __init__(self, limits: dict[str, tuple[float, float]], clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        # (class, caller) → [tokens left, time of the last refill]
        self.buckets: dict[tuple[str, str], list[float]] = {}

    def take(self, klass: str, caller: str) -> float:
        """Spends one request; returns 0 when allowed, else the seconds until one is."""
        limit = self.limits.get(klass)
        if limit is None:
            return 0.0
        capacity, rate = limit
        now = self.clock()
        bucket = self.buckets.get((klass, caller))
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self.buckets[(klass, caller)] = [capacity, now]
        else:
            bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate

    def _forget_full(self, now: float) -> None:
        """Drops buckets that have refilled completely: forgetting them changes nothing."""
        for key, (tokens, last) in list(self.buckets.items()):
            capacity, rate = self.limits[key[0]]
            if tokens + (now - last) * rate >= capacity:
                del self.buckets[key]


class RateGuard:
    """The limits of API requests (never the probes), checked once the caller is known (stack.RequestGate):
    signed-in callers are limited per user."""

    def __init__(self, prefix: str, limiter: RateLimiter, on_limited: Callable[[str], None] | None = None):
        self.auth_prefix = prefix + "/auth/"
        self.limiter = limiter
        self.on_limited = on_limited

    def refusal(self, scope: Scope) -> ApiError | None:
        """429 `rate_limited` with Retry-After once the caller's bucket for this route class is empty."""
        klass = route_class(scope, self.auth_prefix)
        if klass not in self.limiter.limits:
            return None
        wait = self.limiter.take(klass, _caller(scope))
        if wait <= 0:
            return None
        if self.on_limited is not None:
            self.on_limited(klass)
        return ApiError(
            429,
            "rate_limited",
            f"Too many {klass} requests; try again in {math.ceil(wait)} s.",
            headers={"retry-after": str(math.ceil(wait))},
        )


def _caller(scope: Scope) -> str:
    auth = scope["state"].get("auth")
    user_id = getattr(auth, "user_id", None)
    if user_id is not None:
        return "user:" + user_id
    client = scope.get("client")
    return "ip:" + (client[0] if client else "")


# --- the client address behind trusted proxies -------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(text: str) -> tuple[Network, ...]:
    from snackbase.config import ConfigError

    networks = []
    for item in (p.strip() for p in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(
                    f"SNACKBASE_TRUSTED_PROXIES: {item!r} is not an address or network"
                ) from None
    return tuple(networks)


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def forwarded_client(scope: Scope, proxies: tuple[Network, ...]) -> str | None:
    """The client address when the direct peer is a trusted proxy: the right-most X-Forwarded-For
    entry that is not itself a trusted proxy (entries to its left are the client's own claims)."""
    client = scope.get("client")
    if not client or not _trusted(client[0], proxies):
        return None
    values = [v.decode("latin-1") for n, v in scope["headers"] if n == b"x-forwarded-for"]
    hops = [h.strip() for h in ",".join(values).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return None  # a malformed entry: keep the proxy's own address
    return None

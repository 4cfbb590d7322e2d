"""Request limits applied at the edge, before FastAPI: body size, rate, CORS origins.

They live outside FastAPI because the hot routes (``GET /decision``, ``POST /reward``)
are answered by :class:`services.decider.hot_path.DecisionFastPath` before FastAPI's
middleware stack runs; one implementation covers both paths.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

#: Buckets kept per worker; beyond it the least recently created are dropped (a flood
#: of client addresses must not grow memory without bound).
MAX_BUCKETS: Final = 10_000


class BodyTooLargeError(Exception):
    """The request body grew past the limit while being read."""


def limited_receive(receive: Receive, limit: int) -> Receive:
    """A ``receive`` that raises :class:`BodyTooLargeError` once more than ``limit`` bytes
    arrived (bodies without ``Content-Length``, or lying about it)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLargeError
        return message

    return wrapped


def too_large_body(limit: int) -> bytes:
    return b'{"detail":"request body larger than %d bytes"}' % limit


class RateLimiter:
    """Token buckets per key (``MAB_RATE_LIMIT_PER_S``), in this worker process only.

    With N workers behind a load balancer a key may get up to N times the rate: the
    limit protects each process from one noisy key, it is not a global quota.
    """

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        self.rate = rate_per_s
        self.burst = max(1.0, burst if burst is not None else rate_per_s)
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill]

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take one token: ``0.0`` if allowed, else the seconds until one is available."""
        t = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                for old in list(self._buckets)[: MAX_BUCKETS // 10]:
                    del self._buckets[old]
            self._buckets[key] = [self.burst - 1.0, t]
            return 0.0
        tokens = min(self.burst, bucket[0] + (t - bucket[1]) * self.rate)
        bucket[1] = t
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate


def retry_after(wait_s: float) -> bytes:
    """``Retry-After`` is whole seconds; never 0 (clients would spin)."""
    return b"%d" % max(1, math.ceil(wait_s))


RATE_LIMITED: Final = b'{"detail":"rate limit exceeded for this key, retry later"}'


class CorsPolicy:
    """Allowed origins (``MAB_CORS_ORIGINS``); the fast path adds the simple-response
    headers itself, everything else (preflights included) goes through Starlette's
    ``CORSMiddleware`` configured from the same list."""

    __slots__ = ("allow_all", "origins")

    def __init__(self, origins: str) -> None:
        listed = [o.strip().rstrip("/") for o in origins.split(",") if o.strip()]
        self.allow_all = "*" in listed
        self.origins = frozenset(o.encode() for o in listed if o != "*")

    @property
    def enabled(self) -> bool:
        return self.allow_all or bool(self.origins)

    @property
    def origin_list(self) -> list[str]:
        return ["*"] if self.allow_all else sorted(o.decode() for o in self.origins)

    def headers_for(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """Headers of a simple (non-preflight) response to ``origin``; none if refused."""
        if origin is None:
            return []
        if self.allow_all:
            return [(b"access-control-allow-origin", b"*")]
        if origin in self.origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        return []

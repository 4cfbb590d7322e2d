"""``GET /ready``: is this process able to serve? Redis answers and Kafka has our topics.

The verdict is cached for ``MAB_READY_CACHE_S`` (1 s) and concurrent probes share one
check, so a load balancer probing every instance often (or an attacker hammering the
open endpoint) costs at most one PING and one metadata request per second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from redis.exceptions import RedisError

from stream_runtime.redis_client import AnyRedis


class KafkaCheck(Protocol):
    async def check(self, timeout_s: float) -> str: ...


class ReadinessProbe:
    """Checks Redis (PING) and Kafka (metadata with our topics), each within the timeout."""

    def __init__(
        self, redis: AnyRedis, kafka: KafkaCheck, timeout_s: float, cache_s: float = 1.0
    ) -> None:
        self.redis = redis
        self.kafka = kafka
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._verdict: dict[str, str] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()
        self.checks = 0  # real checks run (tests prove the cache with it)

    async def verdict(self) -> dict[str, str]:
        """``{"status": "ready"|"not_ready", "redis": ..., "kafka": ...}``."""
        if self._fresh():
            assert self._verdict is not None
            return self._verdict
        async with self._lock:
            if not self._fresh():  # another probe may have refreshed it while we waited
                self._verdict = await self._check()
                self._at = time.monotonic()
            assert self._verdict is not None
            return self._verdict

    def _fresh(self) -> bool:
        return self._verdict is not None and time.monotonic() - self._at < self.cache_s

    async def _check(self) -> dict[str, str]:
        self.checks += 1
        redis_state, kafka_state = await asyncio.gather(
            self._redis(), self.kafka.check(self.timeout_s)
        )
        ok = redis_state == "ok" and kafka_state == "ok"
        status = "ready" if ok else "not_ready"
        return {"status": status, "redis": redis_state, "kafka": kafka_state}

    async def _redis(self) -> str:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.ping()
            return "ok"
        except TimeoutError:
            return f"no PONG within {self.timeout_s}s"
        except RedisError as exc:
            return f"error: {exc!r}"

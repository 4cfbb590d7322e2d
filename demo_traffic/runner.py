"""The traffic loop: decision -> Bernoulli reward (with its decision id), paced, resilient.

It talks to the decider through the SDK (``mab_client``), like a storefront would: every
request has a bounded timeout and the SDK retries what is safe to retry; when the API
stays down (stack starting or restarting) the loop itself backs off exponentially with
jitter, so ``mab up`` can start this before the decider is ready. It never raises out
of :meth:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

import httpx

from bandit_core.strategies import STRATEGIES
from demo_traffic.settings import DemoSettings
from demo_traffic.story import ARMS, rates_at, sim_hour
from mab_client import (
    AsyncMabClient,
    ConflictError,
    MabTransportError,
    NotFoundError,
    RetryPolicy,
    UnavailableError,
)

log = logging.getLogger("demo_traffic")


def strategy_choice(seconds_per_day: float) -> tuple[str, dict[str, float]]:
    """A drift-adaptive strategy if registered (the story shifts every few simulated
    hours), with a half-life of one simulated hour, else stationary Thompson."""
    if "discounted_thompson" in STRATEGIES:
        half_life = min(max(seconds_per_day / 24.0, 16.0), 262_144.0)
        return "discounted_thompson", {"half_life": half_life}
    return "thompson", {}


#: What the SDK raises when the API is (still) unreachable or overloaded.
TRANSIENT = (MabTransportError, UnavailableError)


@dataclass(slots=True)
class Stats:
    decisions: int = 0
    rewards: int = 0
    conversions: int = 0
    errors: int = 0


class Pacer:
    """Hands out send slots at most ``rps`` per second across all workers."""

    def __init__(self, rps: float) -> None:
        self.interval = 1.0 / rps
        self.next = time.monotonic()
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            # Never bank more than a second of unused slots (no burst after a pause).
            self.next = max(self.next, now - 1.0)
            delay = self.next - now
            self.next += self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class DemoTraffic:
    def __init__(self, settings: DemoSettings, client: AsyncMabClient | None = None) -> None:
        self.s = settings
        self.rng = random.Random(settings.mab_demo_seed)
        self.stats = Stats()
        self._client = client
        self._t0 = time.monotonic()
        self._failures = 0

    def hour(self) -> float:
        return sim_hour(
            time.monotonic() - self._t0,
            self.s.mab_demo_seconds_per_day,
            self.s.mab_demo_start_hour,
        )

    async def _backoff(self, stop: asyncio.Event, why: str) -> None:
        self._failures += 1
        self.stats.errors += 1
        delay = min(self.s.mab_demo_max_backoff_s, 0.25 * 2 ** min(self._failures, 10))
        delay *= 0.5 + self.rng.random()
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning("API unavailable, backing off", extra={"why": why, "delay_s": delay})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)

    async def ensure_experiment(self, c: AsyncMabClient, stop: asyncio.Event) -> bool:
        """Create the experiment (409 = already there); retry until it exists or stop."""
        strategy, params = strategy_choice(self.s.mab_demo_seconds_per_day)
        exp = self.s.mab_demo_experiment_id
        while not stop.is_set():
            try:
                await c.create_experiment(exp, list(ARMS), strategy, params)
                status = 201
            except ConflictError:
                status = 409
            except TRANSIENT as exc:
                await self._backoff(stop, str(exc))
                continue
            except Exception as exc:  # a 4xx we cannot fix by waiting: say so, keep trying
                log.error("cannot create the experiment", extra={"error": str(exc)})
                await self._backoff(stop, repr(exc))
                continue
            self._failures = 0
            log.info(
                "experiment ready",
                extra={"status": status, "strategy": strategy, "params": params},
            )
            return True
        return False

    async def one(self, c: AsyncMabClient) -> None:
        """One visitor: a decision, then a 0/1 reward drawn from the arm's rate now,
        sent with the decision's id so the two are joined."""
        decision = await c.decide(self.s.mab_demo_experiment_id)
        self.stats.decisions += 1
        rate = rates_at(self.hour()).get(decision.arm_id, 0.0)
        reward = 1.0 if self.rng.random() < rate else 0.0
        await c.reward_for(decision, reward)
        self.stats.rewards += 1
        self.stats.conversions += int(reward)

    async def _worker(self, c: AsyncMabClient, pacer: Pacer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pacer.wait()
            try:
                await self.one(c)
                self._failures = 0
            except TRANSIENT as exc:
                await self._backoff(stop, str(exc))
            except NotFoundError:
                await self.ensure_experiment(c, stop)
            except Exception as exc:  # never crash the demo: log, back off, go on
                log.exception("unexpected error")
                await self._backoff(stop, repr(exc))

    async def _progress(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=10.0)
            h = self.hour()
            log.info(
                "progress",
                extra={
                    "sim_time": f"{int(h):02d}:{int(h % 1 * 60):02d}",
                    "rates": rates_at(h),
                    "decisions": self.stats.decisions,
                    "rewards": self.stats.rewards,
                    "conversions": self.stats.conversions,
                    "errors": self.stats.errors,
                },
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Create the experiment, then loop over the simulated days until ``stop``."""
        client = self._client or AsyncMabClient(
            self.s.mab_api_url,
            timeout=self.s.mab_demo_timeout_s,
            limits=httpx.Limits(max_connections=self.s.mab_demo_concurrency),
            # Short SDK retries ride out a blip; the loop's own backoff (up to
            # MAB_DEMO_MAX_BACKOFF_S) handles a stack that is down for longer.
            retry=RetryPolicy(max_attempts=3, backoff_base_s=0.1, backoff_max_s=1.0),
            seed=self.s.mab_demo_seed,
            api_key=self.s.mab_api_key.get_secret_value() if self.s.mab_api_key else None,
        )
        try:
            if not await self.ensure_experiment(client, stop):
                return
            self._t0 = time.monotonic()
            pacer = Pacer(self.s.mab_demo_rps)
            tasks = [
                asyncio.create_task(self._worker(client, pacer, stop))
                for _ in range(self.s.mab_demo_concurrency)
            ]
            tasks.append(asyncio.create_task(self._progress(stop)))
            await asyncio.gather(*tasks)
        finally:
            if self._client is None:
                await client.aclose()

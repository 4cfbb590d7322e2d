"""The traffic loop: decision -> Bernoulli reward (with its decision id), paced, resilient.

Every request has a bounded timeout; any failure (API down, 5xx, timeout) backs off
exponentially with jitter and retries, so ``mab up`` can start this before the decider
is ready and it survives restarts of the stack. It never raises out of :meth:`run`.
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

log = logging.getLogger("demo_traffic")


def strategy_choice(seconds_per_day: float) -> tuple[str, dict[str, float]]:
    """A drift-adaptive strategy if registered (the story shifts every few simulated
    hours), with a half-life of one simulated hour, else stationary Thompson."""
    if "discounted_thompson" in STRATEGIES:
        half_life = min(max(seconds_per_day / 24.0, 16.0), 262_144.0)
        return "discounted_thompson", {"half_life": half_life}
    return "thompson", {}


class TransientError(Exception):
    """Worth a retry: network error, timeout, 429 or 5xx."""


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
    def __init__(self, settings: DemoSettings, client: httpx.AsyncClient | None = None) -> None:
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

    async def _request(
        self, c: httpx.AsyncClient, method: str, path: str, **kw: object
    ) -> httpx.Response:
        try:
            resp = await c.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise TransientError(repr(exc)) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(f"{method} {path}: HTTP {resp.status_code}")
        return resp

    async def _backoff(self, stop: asyncio.Event, why: str) -> None:
        self._failures += 1
        self.stats.errors += 1
        delay = min(self.s.mab_demo_max_backoff_s, 0.25 * 2 ** min(self._failures, 10))
        delay *= 0.5 + self.rng.random()
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning("API unavailable, backing off", extra={"why": why, "delay_s": delay})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)

    async def ensure_experiment(self, c: httpx.AsyncClient, stop: asyncio.Event) -> bool:
        """Create the experiment (409 = already there); retry until it exists or stop."""
        strategy, params = strategy_choice(self.s.mab_demo_seconds_per_day)
        body = {
            "experiment_id": self.s.mab_demo_experiment_id,
            "arm_ids": list(ARMS),
            "strategy": strategy,
            "strategy_params": params,
        }
        while not stop.is_set():
            try:
                resp = await self._request(c, "POST", "/experiments", json=body)
            except TransientError as exc:
                await self._backoff(stop, str(exc))
                continue
            if resp.status_code in (201, 409):
                self._failures = 0
                log.info(
                    "experiment ready",
                    extra={"status": resp.status_code, "strategy": strategy, "params": params},
                )
                return True
            log.error("cannot create the experiment", extra={"status": resp.status_code})
            await self._backoff(stop, f"HTTP {resp.status_code}")
        return False

    async def one(self, c: httpx.AsyncClient) -> None:
        """One visitor: a decision, then a 0/1 reward drawn from the arm's rate now."""
        exp = self.s.mab_demo_experiment_id
        resp = await self._request(c, "GET", "/decision", params={"experiment_id": exp})
        if resp.status_code == 404:
            raise LookupError("experiment disappeared")
        if resp.status_code != 200:
            raise TransientError(f"decision: HTTP {resp.status_code}")
        body = resp.json()
        arm = str(body["arm_id"])
        self.stats.decisions += 1
        rate = rates_at(self.hour()).get(arm, 0.0)
        reward = 1.0 if self.rng.random() < rate else 0.0
        payload = {
            "experiment_id": exp,
            "arm_id": arm,
            "reward": reward,
            "decision_id": body.get("decision_id"),
        }
        resp = await self._request(c, "POST", "/reward", json=payload)
        if resp.status_code != 200:
            raise TransientError(f"reward: HTTP {resp.status_code}")
        self.stats.rewards += 1
        self.stats.conversions += int(reward)

    async def _worker(self, c: httpx.AsyncClient, pacer: Pacer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pacer.wait()
            try:
                await self.one(c)
                self._failures = 0
            except TransientError as exc:
                await self._backoff(stop, str(exc))
            except LookupError:
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
        timeout = httpx.Timeout(self.s.mab_demo_timeout_s)
        limits = httpx.Limits(max_connections=self.s.mab_demo_concurrency)
        key = self.s.mab_api_key.get_secret_value() if self.s.mab_api_key else ""
        headers = {"Authorization": f"Bearer {key}"} if key else None
        client = self._client or httpx.AsyncClient(
            base_url=self.s.mab_api_url, timeout=timeout, limits=limits, headers=headers
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

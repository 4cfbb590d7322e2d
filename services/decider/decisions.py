"""The decision hot path: an in-process cache of config + snapshot per experiment.

Why bounded staleness is safe for a bandit: the policy is a function of aggregate
statistics that move by one reward at a time, so serving from a snapshot a few hundred
milliseconds old changes the decision *distribution* imperceptibly (the reward consumer
itself lags by about as much). What must never be stale is existence: a cache miss
always reads Redis, so "create, then decide" works on any process immediately, and
commands handled by this process invalidate their experiment's entry.

Per request there is no I/O: an entry younger than ``max_staleness`` is used as is, and
one older than half of it triggers a *background* refresh (one MGET of the config and
snapshot keys, single-flight per experiment) while the current request is still served
from memory. Only an entry past ``max_staleness`` (or a miss) waits for Redis.

Randomness: one ``random.Random`` per experiment and process (``make_rng``), kept
across refreshes and arm additions and replaced only when the strategy or its params
change, so a seeded experiment yields a reproducible *sequence*, never one frozen arm.

Propensities depend only on the snapshot, so they are computed once per entry (closed
form, or Monte Carlo for Thompson with a separate generator that never perturbs the
seeded decision stream), not per request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from bandit_core.rng import make_rng
from bandit_core.state import ArmStats, ExperimentState
from bandit_core.strategies import Strategy, get_strategy
from schemas.events import ExperimentConfig
from services.decider.store import ConfigStore

log = logging.getLogger(__name__)

#: Floor for a served arm's propensity (a Monte Carlo estimate may round to zero).
MIN_PROPENSITY = 1e-6


@dataclass(slots=True)
class CachedExperiment:
    """Everything a decision needs, parsed once per refresh."""

    config: ExperimentConfig
    config_raw: bytes
    snap_raw: bytes | None
    state: ExperimentState
    strategy: Strategy
    stats: list[ArmStats]
    arm_list: list[str]
    rng: random.Random
    fetched_at: float
    propensities: list[float] | None = field(default=None)

    @property
    def params(self) -> dict[str, Any]:
        return self.config.strategy_params


class DecisionCache:
    """Config + snapshot per experiment, refreshed from Redis with bounded staleness."""

    def __init__(
        self,
        store: ConfigStore,
        *,
        max_staleness_s: float,
        max_entries: int,
        propensity_samples: int,
        degraded_max_age_s: float,
    ) -> None:
        self.store = store
        self.max_staleness_s = max_staleness_s
        self.max_entries = max_entries
        self.propensity_samples = propensity_samples
        self.degraded_max_age_s = degraded_max_age_s
        self._entries: dict[str, CachedExperiment] = {}
        self._inflight: dict[str, asyncio.Task[CachedExperiment | None]] = {}
        self._mc_rng = random.Random()

    def invalidate(self, experiment_id: str) -> None:
        """Drop an entry after a local command; an in-flight load will not re-insert it."""
        self._entries.pop(experiment_id, None)
        self._inflight.pop(experiment_id, None)

    async def get(self, experiment_id: str) -> tuple[CachedExperiment | None, bool]:
        """The entry (``None``: no such experiment) and whether it is degraded (stale).

        Raises :class:`RedisError` only when there is nothing usable in memory.
        """
        entry = self._entries.get(experiment_id)
        if entry is not None:
            age = time.monotonic() - entry.fetched_at
            if age < self.max_staleness_s:
                if age >= self.max_staleness_s / 2 and experiment_id not in self._inflight:
                    self._load(experiment_id)  # refresh ahead, serve from memory now
                return entry, False
        task = self._inflight.get(experiment_id) or self._load(experiment_id)
        try:
            return await asyncio.shield(task), False
        except RedisError:
            if entry is not None and time.monotonic() - entry.fetched_at < self.degraded_max_age_s:
                return entry, True
            raise

    def _load(self, experiment_id: str) -> asyncio.Task[CachedExperiment | None]:
        task = asyncio.create_task(self._fetch(experiment_id))
        self._inflight[experiment_id] = task

        def done(t: asyncio.Task[CachedExperiment | None]) -> None:
            if self._inflight.get(experiment_id) is t:
                del self._inflight[experiment_id]
            if not t.cancelled() and t.exception() is not None:
                log.warning("refresh of %s failed: %r", experiment_id, t.exception())

        task.add_done_callback(done)
        return task

    async def _fetch(self, experiment_id: str) -> CachedExperiment | None:
        me = asyncio.current_task()
        config_raw, snap_raw = await self.store.get_config_and_snapshot(experiment_id)
        prev = self._entries.get(experiment_id)
        if config_raw is None:
            if self._inflight.get(experiment_id) is me:
                self._entries.pop(experiment_id, None)
            return None
        entry = self._build(experiment_id, config_raw, snap_raw, prev)
        if self._inflight.get(experiment_id) is me:  # not invalidated meanwhile
            self._entries.pop(experiment_id, None)  # re-insert: oldest-first eviction
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[experiment_id] = entry
        return entry

    def _build(
        self,
        experiment_id: str,
        config_raw: bytes,
        snap_raw: bytes | None,
        prev: CachedExperiment | None,
    ) -> CachedExperiment:
        now = time.monotonic()
        if prev is not None and prev.config_raw == config_raw:
            if prev.snap_raw == snap_raw:
                prev.fetched_at = now
                return prev
            config = prev.config
        else:
            config = ExperimentConfig.model_validate_json(config_raw)
        state = ExperimentState.from_snapshot(snap_raw, experiment_id)
        same_policy = (
            prev is not None
            and prev.config.strategy == config.strategy
            and prev.config.strategy_params == config.strategy_params
        )
        return CachedExperiment(
            config=config,
            config_raw=config_raw,
            snap_raw=snap_raw,
            state=state,
            strategy=get_strategy(config.strategy),
            stats=state.stats_for(config.arm_ids),
            arm_list=list(config.arm_ids),
            rng=prev.rng if same_policy and prev is not None else make_rng(config.strategy_params),
            fetched_at=now,
        )

    def decide(self, entry: CachedExperiment, now: float) -> tuple[int, float]:
        """Choose an arm (one strategy call) and look up its propensity (cached)."""
        index = entry.strategy.choose(entry.arm_list, entry.stats, entry.params, entry.rng, now)
        props = entry.propensities
        if props is None:
            props = entry.propensities = self.propensities(entry.config, entry.stats, now)
        return index, max(props[index], MIN_PROPENSITY)

    def propensities(
        self, config: ExperimentConfig, stats: list[ArmStats], now: float
    ) -> list[float]:
        return get_strategy(config.strategy).propensities(
            config.arm_ids,
            stats,
            config.strategy_params,
            self._mc_rng,
            now,
            self.propensity_samples,
        )

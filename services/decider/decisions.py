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
change, so a seeded experiment yields a reproducible *sequence* of draws, never one
frozen arm (which request gets which draw depends on timing: refreshes and refills).
The strategy's typed params (``params_for``) are built with the generator, so a
decision reads them as attributes and a refreshed snapshot does not rebuild them.

Propensities depend only on the snapshot, so they are computed once per entry (closed
form, or Monte Carlo for Thompson with a separate generator that never perturbs the
seeded decision stream), not per request. For the same reason a strategy that can
(``Strategy.batch_sampler``: Thompson) prepares its posteriors once per entry and
pre-draws a batch of choices in one numpy call, and each request takes the next one:
every choice is still an independent draw from that entry's policy, and a refreshed
snapshot starts a new batch.

Catalogue-sized experiments: building an entry is O(arms), parsing the snapshot (~0.8
KB of adaptive statistics per arm) and, for Thompson, ``propensity_samples`` draws of
every arm; with 1,000 arms that is ~60 ms, and one batch of choices is 16,000 draws.
So the event loop does none of it: an entry is built in a worker thread (numpy
releases the GIL while it samples) while decisions are served from the previous entry,
which stays consistent with its own propensities; its first choices are drawn there
too, and more in a worker thread while enough are left (:data:`OFF_LOOP_DRAWS`). And an
experiment is refreshed only as often as keeps its builds under
:data:`REFRESH_TIME_SHARE` of the time: when one build takes longer than that share of
half the staleness bound, the bound grows for that experiment (1,000 arms: re-read
about every second instead of every 125 ms; a small experiment is unaffected).

The traffic floor (``min_arm_share = f`` over ``k`` arms) is a mixture: with probability
``k f`` a uniformly random arm, otherwise the strategy's choice, so arm ``i`` is served
with probability ``f + (1 - k f) p_i``, which is what the decision logs (off-policy
evaluation divides by it). Both numbers are computed once per entry (``explore``,
``logged``); without a floor ``explore`` is 0 and a decision pays one falsy test.

Guardrails (docs/guardrails.md): an arm a breach paused (``ExperimentState.guard``) is
left out of the strategy's choice: the strategy sees only the other arms (its sampler,
choices and propensities), so the paused arm's propensity is 0 and the others'
renormalise among themselves. The traffic floor still applies to every arm: a paused arm
keeps ``min_arm_share`` when a floor is set (the floor is the experimenter's promise
that every arm keeps some traffic; set no floor to stop a paused arm entirely).

The holdout (``holdout_share = h``, :mod:`bandit_core.holdout`) comes on top: with
probability ``h`` the control arm (:meth:`DecisionCache.held_out`, a draw of the same
generator), otherwise the choice above, so ``logged`` is :func:`with_holdout` of the
floored propensities: every decision of an arm logs the arm's true propensity, whichever
branch served it.

With ``route_to_winner``, once the fold has declared a winner (the snapshot's
``winner``) the policy is the winner alone: propensities 1 for it and 0 for the others,
before the floor and the holdout, so the allocation weights route units too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from bandit_core.allocation import apply_floor
from bandit_core.holdout import with_holdout
from bandit_core.rng import make_rng
from bandit_core.state import ArmStats, ExperimentState
from bandit_core.strategies import Strategy, StrategyParams, get_strategy, params_for
from bandit_core.strategies.base import BatchSampler
from schemas.events import ExperimentConfig
from services.decider.store import ConfigStore

log = logging.getLogger(__name__)

#: Floor for a served arm's propensity (a Monte Carlo estimate may round to zero).
MIN_PROPENSITY = 1e-6
#: Beta draws per pre-drawn batch (rows = this / arms, within the bounds below): large
#: enough to amortise numpy's per-call cost, small enough that the request drawing a
#: batch stalls the loop well under a millisecond (100 arms: 81 rows, ~0.3 ms).
BATCH_DRAWS = 8192
BATCH_ROWS = (16, 1024)
#: Beta draws per batch drawn off the event loop (with the entry, and refills; rows
#: within ``BATCH_ROWS``): larger than the loop's own, which stall it, so a worker
#: thread stays ahead of the loop. A refill starts while fewer choices than one such
#: batch are left.
OFF_LOOP_DRAWS = 8 * BATCH_DRAWS
#: Largest share of the decider's time that refreshing one experiment may take.
REFRESH_TIME_SHARE = 0.05


def _rows(draws: int, arms: int) -> int:
    """Rows of a batch of about ``draws`` Beta draws, within :data:`BATCH_ROWS`."""
    low, high = BATCH_ROWS
    return max(low, min(high, draws // max(1, arms)))


@dataclass(slots=True)
class CachedExperiment:
    """Everything a decision needs, parsed once per refresh."""

    config: ExperimentConfig
    config_raw: bytes
    snap_raw: bytes | None
    state: ExperimentState
    strategy: Strategy[Any]
    #: The config's params as the strategy's model, built when the policy changes.
    params: StrategyParams
    stats: list[ArmStats]
    arm_list: list[str]
    rng: random.Random
    fetched_at: float
    propensities: list[float]
    #: Seconds its build took (wall time in the worker thread): paces its refreshes.
    build_s: float = 0.0
    #: Draws batches of choices from this entry's state (``Strategy.batch_sampler``,
    #: prepared with the entry); ``None``: the strategy chooses per request.
    sampler: BatchSampler | None = None
    #: Pre-drawn choices of a batching strategy, served from the end; ``None``: none yet.
    queued: list[int] | None = field(default=None)
    #: A worker thread is drawing the next batch (:meth:`DecisionCache._refill`).
    refilling: bool = False
    #: ``{"arms": [...]}`` of the response and the strategy params of the event, encoded
    #: once per entry instead of once per request (100 arm ids are ~2 µs of JSON).
    metadata_json: orjson.Fragment = field(default_factory=lambda: orjson.Fragment(b"{}"))
    params_json: orjson.Fragment = field(default_factory=lambda: orjson.Fragment(b"{}"))
    #: Probability ``k * min_arm_share`` of serving a uniformly random arm (the traffic
    #: floor); 0: no floor, the strategy chooses every time.
    explore: float = 0.0
    #: The propensity a decision of each arm logs: ``propensities`` after the floor,
    #: never below :data:`MIN_PROPENSITY`. Empty until :meth:`DecisionCache._build` sets it.
    logged: list[float] = field(default_factory=list)
    #: The experiment's ``holdout_share`` (0: none) and its control arm's index.
    holdout: float = 0.0
    control: int = 0
    #: The declared winner's index when the experiment routes all traffic to it.
    routed: int | None = None
    #: The arms the strategy chooses among (``arm_list`` minus the paused arms) with
    #: their stats, and the index in ``arm_list`` of each; ``None``: nothing is paused,
    #: the strategy chooses among ``arm_list`` itself.
    choice_arms: list[str] = field(default_factory=list)
    choice_stats: list[ArmStats] = field(default_factory=list)
    index_map: list[int] | None = None


def active_arms(
    arm_ids: list[str], stats: list[ArmStats], paused: frozenset[str]
) -> tuple[list[str], list[ArmStats], list[int] | None]:
    """The arms the strategy may choose among (those not paused by a guardrail), their
    stats and their indices in ``arm_ids`` (``None`` when none is paused). The control
    arm is never paused, so the choice is never empty; should every arm be named, all
    are kept rather than serve nothing."""
    if not paused:
        return arm_ids, stats, None
    keep = [i for i, a in enumerate(arm_ids) if a not in paused]
    if not keep or len(keep) == len(arm_ids):
        return arm_ids, stats, None
    return [arm_ids[i] for i in keep], [stats[i] for i in keep], keep


def expand(propensities: list[float], index_map: list[int] | None, arms: int) -> list[float]:
    """Propensities over the chosen-among arms as propensities over all ``arms`` (0 for
    the paused ones)."""
    if index_map is None:
        return propensities
    full = [0.0] * arms
    for p, i in zip(propensities, index_map, strict=True):
        full[i] = p
    return full


def routed_index(config: ExperimentConfig, state: ExperimentState) -> int | None:
    """The declared winner's index when ``config`` routes all traffic to it (and one is
    declared, in this experiment's arms), else ``None``."""
    winner = state.winner
    if not config.route_to_winner or winner is None or winner not in config.arm_ids:
        return None
    return config.arm_ids.index(winner)


def served_propensities(propensities: list[float], config: ExperimentConfig) -> list[float]:
    """What the per-request policy serves each arm with: the strategy's propensities
    after the traffic floor, ``f + (1 - k f) p_i`` (a copy of them when ``f == 0``), and
    the holdout (:func:`~bandit_core.holdout.with_holdout`)."""
    floored = apply_floor(propensities, config.min_arm_share)
    return with_holdout(floored, config.holdout_share, config.control_index)


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

    def staleness_s(self, entry: CachedExperiment) -> float:
        """How old ``entry`` may get before a decision waits for Redis: the configured
        bound, or longer when building it costs more than :data:`REFRESH_TIME_SHARE` of
        a refresh interval (half of it), so refreshes never eat the decider's time.
        A bound of 0 ("always re-read") is kept as it is: the operator asked for it."""
        stale = self.max_staleness_s
        if stale and entry.build_s * 2 > REFRESH_TIME_SHARE * stale:
            return 2 * entry.build_s / REFRESH_TIME_SHARE
        return stale

    def fresh(self, experiment_id: str) -> CachedExperiment | None:
        """The entry if it may be served without waiting (the hot path's common case,
        no coroutine); ``None``: call :meth:`get`."""
        entry = self._entries.get(experiment_id)
        if entry is None:
            return None
        age = time.monotonic() - entry.fetched_at
        staleness = self.staleness_s(entry)
        if age >= staleness:
            return None
        if age >= staleness / 2 and experiment_id not in self._inflight:
            self._load(experiment_id)  # refresh ahead, serve from memory now
        return entry

    async def get(self, experiment_id: str) -> tuple[CachedExperiment | None, bool]:
        """The entry (``None``: no such experiment) and whether it is degraded (stale).

        Raises :class:`RedisError` only when there is nothing usable in memory.
        """
        fresh = self.fresh(experiment_id)
        if fresh is not None:
            return fresh, False
        entry = self._entries.get(experiment_id)
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
        if prev is not None and prev.config_raw == config_raw and prev.snap_raw == snap_raw:
            prev.fetched_at = time.monotonic()  # nothing changed: no rebuild
            entry = prev
        else:
            entry = await asyncio.to_thread(self._build, experiment_id, config_raw, snap_raw, prev)
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
        """A new entry (runs in a worker thread: it reads ``prev``, never changes it)."""
        started = time.perf_counter()
        if prev is not None and prev.config_raw == config_raw:
            config = prev.config
        else:
            config = ExperimentConfig.model_validate_json(config_raw)
        state = ExperimentState.from_snapshot(snap_raw, experiment_id)
        same_policy = (
            prev is not None
            and prev.config.strategy == config.strategy
            and prev.config.strategy_params == config.strategy_params
        )
        arm_list = list(config.arm_ids)
        stats = state.stats_for(config.arm_ids)
        strategy = get_strategy(config.strategy)
        if same_policy and prev is not None:
            params, rng = prev.params, prev.rng
        else:
            params = params_for(config.strategy, config.strategy_params)
            rng = make_rng(params.seed)
        choice_arms, choice_stats, index_map = active_arms(arm_list, stats, state.guard.paused)
        routed = routed_index(config, state)
        if routed is None:
            sampler = strategy.batch_sampler(choice_arms, choice_stats, params, time.time())
            propensities = expand(
                self._propensities(strategy, params, choice_arms, choice_stats, time.time()),
                index_map,
                len(arm_list),
            )
        else:
            sampler = None
            propensities = [float(i == routed) for i in range(len(arm_list))]
        floor = config.min_arm_share
        entry = CachedExperiment(
            config=config,
            config_raw=config_raw,
            snap_raw=snap_raw,
            state=state,
            strategy=strategy,
            params=params,
            stats=stats,
            arm_list=arm_list,
            rng=rng,
            fetched_at=time.monotonic(),
            propensities=propensities,
            sampler=sampler,
            # The first batches too are drawn here, off the event loop.
            queued=None if sampler is None else sampler(rng, _rows(OFF_LOOP_DRAWS, len(arm_list))),
            metadata_json=orjson.Fragment(orjson.dumps({"arms": arm_list})),
            params_json=orjson.Fragment(orjson.dumps(config.strategy_params)),
            explore=min(1.0, len(arm_list) * floor),
            logged=[max(p, MIN_PROPENSITY) for p in served_propensities(propensities, config)],
            choice_arms=choice_arms,
            choice_stats=choice_stats,
            index_map=index_map,
            holdout=config.holdout_share,
            control=config.control_index,
            routed=routed,
        )
        entry.build_s = time.perf_counter() - started
        return entry

    @staticmethod
    def held_out(entry: CachedExperiment) -> bool:
        """Whether this request (without a unit, or a per_request unit) goes to the
        holdout: one draw of the entry's generator, only when the experiment has one."""
        return entry.holdout > 0.0 and entry.rng.random() < entry.holdout

    def decide(self, entry: CachedExperiment, now: float) -> tuple[int, float]:
        """Choose an arm (the floor's uniform arm, a pre-drawn one, or one strategy
        call) and look up its logged propensity (cached). Pre-drawn choices are refilled
        in a worker thread."""
        if entry.explore and entry.rng.random() < entry.explore:
            index = entry.rng.randrange(len(entry.arm_list))
            return index, entry.logged[index]
        if entry.routed is not None:
            return entry.routed, entry.logged[entry.routed]
        queued = entry.queued
        index_map = entry.index_map
        if queued:
            index = queued.pop()
        elif entry.sampler is not None:
            # Served faster than refilled (or outside the service): draw here.
            queued = entry.sampler(entry.rng, self._rows(entry))
            index = queued.pop()
            entry.queued = queued
        else:
            index = entry.strategy.choose(
                entry.choice_arms, entry.choice_stats, entry.params, entry.rng, now
            )
            if index_map is not None:
                index = index_map[index]
            return index, entry.logged[index]
        if not entry.refilling and len(queued) < _rows(OFF_LOOP_DRAWS, len(entry.arm_list)):
            self._refill(entry)
        if index_map is not None:
            index = index_map[index]
        return index, entry.logged[index]

    def _refill(self, entry: CachedExperiment) -> None:
        """Draw ``entry``'s next choices in a worker thread while the event loop serves
        what is left: with 1,000 arms a choice is 1,000 Beta draws (~40 µs), half of the
        loop's time per decision if drawn on it. numpy releases the GIL while it
        samples, and the per-experiment generator has its own lock."""
        sampler = entry.sampler
        if sampler is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the service (tests, tools): draw on demand
            return
        entry.refilling = True
        rows = _rows(OFF_LOOP_DRAWS, len(entry.arm_list))
        future = loop.run_in_executor(None, sampler, entry.rng, rows)

        def done(f: asyncio.Future[list[int]]) -> None:
            entry.refilling = False
            if f.cancelled() or f.exception() is not None:
                return  # the next decision without a queue draws on the loop
            # Served from the end: what is left of the current batch goes first.
            entry.queued = f.result() + (entry.queued or [])

        future.add_done_callback(done)

    @staticmethod
    def _rows(entry: CachedExperiment) -> int:
        """Rows of a batch the event loop draws itself (when refills fall behind)."""
        return _rows(BATCH_DRAWS, len(entry.arm_list))

    def propensities(
        self,
        config: ExperimentConfig,
        stats: list[ArmStats],
        now: float,
        paused: frozenset[str] = frozenset(),
    ) -> list[float]:
        """The served propensities (after the traffic floor) for a config read outside
        the cache (the stats endpoint): what a decision would log now, ``paused`` arms
        left out of the strategy's choice."""
        params = params_for(config.strategy, config.strategy_params)
        arms, arm_stats, index_map = active_arms(list(config.arm_ids), stats, paused)
        raw = self._propensities(get_strategy(config.strategy), params, arms, arm_stats, now)
        full = expand(raw, index_map, len(config.arm_ids))
        return served_propensities(full, config)

    @staticmethod
    def routed_propensities(config: ExperimentConfig, state: ExperimentState) -> list[float] | None:
        """The served propensities when the experiment routes its traffic to a declared
        winner, else ``None``."""
        routed = routed_index(config, state)
        if routed is None:
            return None
        return served_propensities([float(i == routed) for i in range(len(config.arm_ids))], config)

    def _propensities(
        self,
        strategy: Strategy[Any],
        params: StrategyParams,
        arm_ids: list[str],
        stats: list[ArmStats],
        now: float,
    ) -> list[float]:
        return strategy.propensities(
            arm_ids, stats, params, self._mc_rng, now, self.propensity_samples
        )

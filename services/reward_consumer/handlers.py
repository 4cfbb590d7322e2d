"""The batch handler: decode -> read Redis -> offset filter -> fold -> compare-and-set write.

It knows nothing about Kafka consumers (it receives records, returns a report), so it
can be driven by the live consumer and by tests with hand-made records. Commit ordering
lives in :mod:`stream_runtime.kafka_loop`; this module decides when rejects are
dead-lettered relative to the Redis write (:meth:`BatchHandler.handle`).

The read is skipped in steady state. After each write that landed, the handler keeps
the experiment's config, snapshot and whole offsets hash as written (:class:`_Cached`).
The next batch of that experiment is folded from them, assuming none of its dedupe keys
and attribution windows exist in Redis, and the write carries those assumptions
(:class:`~services.reward_consumer.store.Assumed`): the write script checks them in the
same atomic step as the compare-and-set and refuses the write if any is false (another
consumer wrote, the config changed, a record is a duplicate, Redis was wiped). A
refused experiment drops its cache entry and takes the read path at once. So the cache
is never trusted, only checked: a fold from it lands exactly when a fold from a fresh
read would have produced the same write. Rebalances clear the whole cache
(:meth:`BatchHandler.forget`) to keep it to the partitions this process owns.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from bandit_core.adaptive import GLR_DETECTOR
from bandit_core.fold import APPLIED, DUPLICATE, LATE, ChangePoint, fold_batch, rejection_text
from bandit_core.state import ExperimentState
from schemas.events import ChangePointDetected, ExperimentConfig, RewardObserved
from schemas.rejections import Rejection
from schemas.topics import TopicNames
from services.reward_consumer.batch import (
    Positioned,
    RecordLike,
    Rejected,
    build_state,
    decode_batch,
    filter_applied,
    fold_lookups,
    new_offsets,
)
from services.reward_consumer.store import Assumed, ConsumerStore, Loaded, Write
from stream_runtime.batch import (
    MAX_CAS_ATTEMPTS,
    CasConflictError,
    DeadLetterSink,
    SummableReport,
    dead_letter_logger,
    gc_deferred,
    parse_config,
    write_until_settled,
)

__all__ = [
    "MAX_CAS_ATTEMPTS",
    "BatchHandler",
    "BatchReport",
    "CasConflictError",
    "ChangePointSink",
    "DeadLetterSink",
    "change_point_event",
    "log_dead_letter",
]

log = logging.getLogger("services.reward_consumer")

#: Bytes of snapshots and configs the cache keeps (least recently written experiments
#: dropped first). A snapshot is ~1.1 KiB per arm, so this holds e.g. 5,000 experiments
#: of 10 arms, or 50 of 1,000 arms.
CACHE_BYTES: Final = 64 * 1024 * 1024

#: Where detected change points go (the consumer publishes them to the experiments topic).
ChangePointSink = Callable[[Sequence[ChangePointDetected]], Awaitable[None]]

#: A dead-letter sink that only logs (handler tests); the consumer's default is the DLQ.
log_dead_letter: DeadLetterSink = dead_letter_logger(log, "record rejected")


@dataclass(slots=True)
class BatchReport(SummableReport):
    """What one batch did; the consumer sums these into its running stats."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0  # rewards for decisions already folded with the default reward
    redelivered: int = 0  # dropped by the offset check (already in the snapshot)
    conflicts: int = 0
    experiments_written: int = 0
    change_points: int = 0
    #: Experiment writes folded from the in-process cache (no read round trip) and
    #: those the write script refused (then re-read and re-folded in the same batch).
    cache_hits: int = 0
    cache_misses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


def change_point_event(experiment_id: str, cp: ChangePoint) -> ChangePointDetected:
    """The event of one detector alarm, with a DETERMINISTIC id.

    ``cp-<experiment>-<arm>-<n>`` (``n``: the arm's change-point count after the alarm)
    is a pure function of the folded log, so a batch that is re-folded after a failed
    publish, or a replay, emits the same id and consumers can dedupe on it. Ids that
    would exceed the 64-character limit are replaced by a hash of the same triple.
    """
    event_id = f"cp-{experiment_id}-{cp.arm_id}-{cp.number}"
    if len(event_id) > 64:
        digest = hashlib.sha256(f"{experiment_id}\0{cp.arm_id}\0{cp.number}".encode())
        event_id = "cp-" + digest.hexdigest()[:48]
    return ChangePointDetected(
        event_id=event_id,
        ts=cp.ts,
        experiment_id=experiment_id,
        arm_id=cp.arm_id,
        detector=GLR_DETECTOR,
        statistic=cp.statistic,
    )


class BatchHandler:
    """Folds poll batches into Redis snapshots exactly once (see module docstring)."""

    def __init__(
        self,
        store: ConsumerStore,
        topics: TopicNames,
        dead_letter: DeadLetterSink = log_dead_letter,
        change_points: ChangePointSink | None = None,
        *,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        """``cache_bytes=0`` turns the cache off: every batch reads Redis first."""
        self.store = store
        self.topics = topics
        self.dead_letter = dead_letter
        self.change_points = change_points
        self.cache_bytes = cache_bytes
        #: Event-time watermark: the newest event time of any record handled so far
        #: (every experiment, every partition); closes attribution windows.
        self.watermark = 0.0
        #: Experiment id -> what its last landed write stored (module docstring); the
        #: dict's order is recency of writes. ``_cached_bytes`` is its size.
        self._cache: dict[str, _Cached] = {}
        self._cached_bytes = 0

    def forget(self, experiment_id: str | None = None) -> None:
        """Drop one experiment's cache entry, or all of them (a rebalance)."""
        if experiment_id is None:
            self._cache.clear()
            self._cached_bytes = 0
            return
        entry = self._cache.pop(experiment_id, None)
        if entry is not None:
            self._cached_bytes -= entry.size

    def _remember(self, plan: _Plan) -> None:
        """Cache what a landed write stored, dropping the least recently written
        experiments beyond :attr:`cache_bytes`."""
        w = plan.write
        if w is None or plan.config is None or plan.config_raw is None:
            return
        self.forget(w.experiment_id)
        entry = _Cached(plan.config_raw, plan.config, w.snapshot, {**w.expected, **w.new})
        if entry.size > self.cache_bytes:
            return
        cache = self._cache
        cache[w.experiment_id] = entry
        self._cached_bytes += entry.size
        while self._cached_bytes > self.cache_bytes:
            self.forget(next(iter(cache)))

    def _plan_read(
        self,
        exp: str,
        items: list[Positioned],
        loaded: Loaded,
    ) -> _Plan:
        """Offset-filter and fold one experiment's records from a fresh read (no I/O)."""
        config_raw, offsets = loaded.config, loaded.offsets
        fresh, redelivered = filter_applied(items, offsets)
        if not fresh:
            plan = _Plan()
            plan.report.redelivered = redelivered
            return plan
        config = parse_config(config_raw, log)
        if config is None:
            # No config key: the decider writes it before any event of the experiment,
            # so this is a record for an experiment that does not exist. We write
            # nothing (a flood of made-up ids must not create keys); a redelivery is
            # rejected again, and the DLQ's readers dedupe by source position.
            plan = _Plan()
            plan.report.redelivered = redelivered
            detail = f"experiment {exp!r} does not exist"
            plan.rejects = [Rejected(p.record, Rejection.UNKNOWN_EXPERIMENT, detail) for p in fresh]
            return plan
        assert config_raw is not None
        state = build_state(exp, config, loaded.snapshot, loaded.seen, loaded.pending)
        plan = self._fold_plan(exp, fresh, config, state, offsets, None)
        plan.report.redelivered = redelivered
        plan.config_raw = config_raw
        return plan

    def _plan_cached(self, exp: str, items: list[Positioned], cached: _Cached) -> _Plan | None:
        """Fold from the cache, or ``None`` where only a read can decide (no I/O).

        ``None`` when the offset filter drops records (whether they were applied is a
        fact about Redis, e.g. after a wipe, not about our last write) or when the fold
        rejects a record (it would be dead-lettered before the write, and a refused
        write, say with a newer config, could have applied it).
        """
        fresh, redelivered = filter_applied(items, cached.offsets)
        if redelivered:
            return None
        state = build_state(exp, cached.config, cached.snapshot, {})
        keys, ids = fold_lookups(fresh)
        assumed = Assumed(cached.config_raw, cached.snapshot, keys, ids)
        plan = self._fold_plan(exp, fresh, cached.config, state, cached.offsets, assumed)
        if plan.rejects:
            return None
        plan.config_raw = cached.config_raw
        return plan

    def _fold_plan(
        self,
        exp: str,
        fresh: list[Positioned],
        config: ExperimentConfig,
        state: ExperimentState,
        offsets: dict[str, int],
        assumed: Assumed | None,
    ) -> _Plan:
        """Fold ``fresh`` (all beyond the stored offsets) into ``state``: the write, its
        counts, rejects and change points."""
        plan = _Plan(config=config)
        result = fold_batch(state, (p.event for p in fresh))
        for p, outcome in zip(fresh, result.outcomes, strict=True):
            if outcome == APPLIED:
                plan.report.applied += 1
            elif outcome == DUPLICATE:
                plan.report.duplicates += 1
            elif outcome == LATE:
                plan.report.late += 1
            elif isinstance(p.event, RewardObserved):
                detail = rejection_text(Rejection(outcome), p.event, config)
                plan.rejects.append(Rejected(p.record, outcome, detail))
            else:  # pragma: no cover - only rewards are rejected by the fold
                plan.rejects.append(Rejected(p.record, outcome, outcome))
        plan.change_points = [change_point_event(exp, cp) for cp in result.change_points]
        plan.write = Write(
            experiment_id=exp,
            snapshot=result.state.snapshot_bytes(),
            expected=offsets,
            new=new_offsets(fresh),
            new_seen=result.new_seen,
            pending_added=result.pending_added,
            pending_removed=result.pending_removed,
            assumed=assumed,
        )
        return plan

    async def handle(self, records: Sequence[RecordLike]) -> BatchReport:
        """Fold one poll batch into Redis. Raises on I/O errors (the caller retries).

        Rejected records are dead-lettered *before* the point after which they would
        not come back: records the decoder refuses before anything is written, records
        the fold refuses before the Redis write that stores the offsets past them (a
        retried batch drops those by the offset check, so they would never be rejected
        again). Either way the sink has acknowledged them before the caller commits the
        Kafka offsets. A batch that fails after that (Redis down) and is retried may
        dead-letter a record twice; the DLQ's readers dedupe by source position.
        Change points are handed to their sink after the Redis writes and before this
        returns, i.e. before the caller commits the Kafka offsets (at-least-once). The
        cyclic collector is held off while the batch is decoded, folded and written (see
        :func:`stream_runtime.batch.gc_deferred`); :meth:`_fold` has returned, so its
        frame and most of the batch's objects are freed, before it runs again. The
        publish (which retries for as long as the broker is down) runs with it on.
        """
        with gc_deferred():
            report, detected = await self._fold(records)
        if detected and self.change_points is not None:
            await self.change_points(detected)
        report.change_points += len(detected)
        return report

    async def _fold(
        self, records: Sequence[RecordLike]
    ) -> tuple[BatchReport, list[ChangePointDetected]]:
        """Decode, then read -> offset-filter -> fold -> dead-letter -> compare-and-set
        write until settled."""
        report = BatchReport(records=len(records))
        detected: list[ChangePointDetected] = []
        decoded = decode_batch(records, self.topics.rewards, self.topics.decisions)
        # Positions already handed to the sink by this call: a conflicted experiment is
        # re-folded and would otherwise send the same rejects again.
        parked: set[tuple[str, int, int]] = set()

        async def park(rejects: list[Rejected]) -> None:
            fresh = []
            for r in rejects:
                pos = (r.record.topic, r.record.partition, r.record.offset)
                if pos not in parked:
                    parked.add(pos)
                    fresh.append(r)
            if fresh:
                await self.dead_letter(fresh)

        await park(decoded.rejected)
        for r in decoded.rejected:
            report.rejected[r.reason] += 1
        newest = self.watermark
        for items in decoded.by_experiment.values():
            for p in items:
                if p.event.ts > newest:
                    newest = p.event.ts

        def accept(plans: dict[str, _Plan], failed: set[str]) -> None:
            """Keep the outcome of every experiment whose write landed (or needed none)."""
            for exp, plan in plans.items():
                if exp in failed:
                    self.forget(exp)
                    continue
                report.add(plan.report)
                report.experiments_written += plan.write is not None
                for r in plan.rejects:
                    report.rejected[r.reason] += 1
                detected.extend(plan.change_points)
                self._remember(plan)

        async def attempt(pending: dict[str, list[Positioned]]) -> set[str]:
            # 1. Experiments we wrote last: fold from the cache, write with assumptions.
            #    A refused write costs one extra round trip and falls through to step 2.
            cached: dict[str, _Plan] = {}
            to_read: dict[str, list[Positioned]] = {}
            for exp, items in pending.items():
                entry = self._cache.get(exp)
                plan = None if entry is None else self._plan_cached(exp, items, entry)
                if plan is None:
                    to_read[exp] = items
                else:
                    cached[exp] = plan
            if cached:
                refused = set(await self.store.write([p.write for p in cached.values() if p.write]))
                accept(cached, refused)
                report.cache_hits += len(cached) - len(refused)
                report.cache_misses += len(refused)
                for exp in refused:
                    to_read[exp] = pending[exp]
            if not to_read:
                return set()
            # 2. The rest: read -> offset filter -> fold -> dead-letter -> compare-and-set.
            #    Only the conflicted ones are re-read and re-folded on the next attempt.
            lookups = {exp: fold_lookups(items) for exp, items in to_read.items()}
            loaded = await self.store.load(
                {exp: keys for exp, (keys, _) in lookups.items()},
                {exp: ids for exp, (_, ids) in lookups.items()},
            )
            plans = {exp: self._plan_read(exp, it, loaded[exp]) for exp, it in to_read.items()}
            await park([r for plan in plans.values() for r in plan.rejects])
            writes = [p.write for p in plans.values() if p.write is not None]
            conflicted = set(await self.store.write(writes))
            accept(plans, conflicted)
            return conflicted

        report.conflicts += await write_until_settled(decoded.by_experiment, attempt, log)
        self.watermark = newest
        return report, detected


@dataclass(slots=True)
class _Plan:
    """One experiment's fold result: the write (if any), its counts and its rejects,
    and the config it was folded with (cached once the write lands)."""

    write: Write | None = None
    report: BatchReport = field(default_factory=BatchReport)
    rejects: list[Rejected] = field(default_factory=list)
    change_points: list[ChangePointDetected] = field(default_factory=list)
    config: ExperimentConfig | None = None
    config_raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Cached:
    """What the handler's last landed write of an experiment stored (config as read)."""

    config_raw: bytes
    config: ExperimentConfig
    snapshot: bytes
    offsets: dict[str, int]  # the whole offsets hash after that write

    @property
    def size(self) -> int:
        """What the entry costs, roughly: its two blobs (the parsed config is of the
        same order as its JSON)."""
        return 2 * len(self.config_raw) + len(self.snapshot)

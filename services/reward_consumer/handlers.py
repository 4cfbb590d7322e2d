"""The batch handler: decode -> read Redis -> offset filter -> fold -> compare-and-set write.

It knows nothing about Kafka consumers (it receives records, returns a report), so it
can be driven by the live consumer and by tests with hand-made records. Commit ordering
lives in :mod:`stream_runtime.kafka_loop`; this module decides when rejects are
dead-lettered relative to the Redis write (:meth:`BatchHandler.handle`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bandit_core.adaptive import GLR_DETECTOR
from bandit_core.fold import APPLIED, DUPLICATE, LATE, ChangePoint, fold_batch
from schemas.events import ChangePointDetected, RewardObserved
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
from services.reward_consumer.store import ConsumerStore, Loaded, Write
from stream_runtime.batch import (
    MAX_CAS_ATTEMPTS,
    CasConflictError,
    DeadLetterSink,
    SummableReport,
    dead_letter_logger,
    gc_deferred,
    parse_config,
    rejection_detail,
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
    ) -> None:
        self.store = store
        self.topics = topics
        self.dead_letter = dead_letter
        self.change_points = change_points
        #: Event-time watermark: the newest event time of any record handled so far
        #: (every experiment, every partition); closes attribution windows.
        self.watermark = 0.0

    def _plan(self, exp: str, items: list[Positioned], loaded: Loaded) -> _Plan:
        """Offset-filter and fold one experiment's records (no I/O)."""
        plan = _Plan()
        fresh, plan.report.redelivered = filter_applied(items, loaded.offsets)
        if not fresh:
            return plan
        config = parse_config(loaded.config, log)
        if config is None:
            # No config key: the decider writes it before any event of the experiment,
            # so this is a record for an experiment that does not exist. We write
            # nothing (a flood of made-up ids must not create keys); a redelivery is
            # rejected again, and the DLQ's readers dedupe by source position.
            detail = f"experiment {exp!r} does not exist"
            plan.rejects = [Rejected(p.record, "unknown_experiment", detail) for p in fresh]
            return plan
        state = build_state(exp, config, loaded.snapshot, loaded.seen, loaded.pending)
        result = fold_batch(state, (p.event for p in fresh))
        for p, outcome in zip(fresh, result.outcomes, strict=True):
            if outcome == APPLIED:
                plan.report.applied += 1
            elif outcome == DUPLICATE:
                plan.report.duplicates += 1
            elif outcome == LATE:
                plan.report.late += 1
            elif isinstance(p.event, RewardObserved):
                detail = rejection_detail(outcome, p.event, config)
                plan.rejects.append(Rejected(p.record, outcome, detail))
            else:  # pragma: no cover - only rewards are rejected by the fold
                plan.rejects.append(Rejected(p.record, outcome, outcome))
        plan.change_points = [change_point_event(exp, cp) for cp in result.change_points]
        plan.write = Write(
            experiment_id=exp,
            snapshot=result.state.snapshot_bytes(),
            expected=loaded.offsets,
            new=new_offsets(fresh),
            new_seen=result.new_seen,
            pending_added=result.pending_added,
            pending_removed=result.pending_removed,
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

        async def attempt(pending: dict[str, list[Positioned]]) -> set[str]:
            lookups = {exp: fold_lookups(items) for exp, items in pending.items()}
            loaded = await self.store.load(
                {exp: keys for exp, (keys, _) in lookups.items()},
                {exp: ids for exp, (_, ids) in lookups.items()},
            )
            plans = {exp: self._plan(exp, items, loaded[exp]) for exp, items in pending.items()}
            await park([r for plan in plans.values() for r in plan.rejects])
            writes = [p.write for p in plans.values() if p.write is not None]
            conflicted = set(await self.store.write(writes))
            # Keep the outcome of every experiment whose write landed (or needed none);
            # only the conflicted ones are re-read and re-folded on the next attempt.
            for exp, plan in plans.items():
                if exp in conflicted:
                    continue
                report.add(plan.report)
                report.experiments_written += plan.write is not None
                for r in plan.rejects:
                    report.rejected[r.reason] += 1
                detected.extend(plan.change_points)
            return conflicted

        report.conflicts += await write_until_settled(decoded.by_experiment, attempt, log)
        self.watermark = newest
        return report, detected


@dataclass(slots=True)
class _Plan:
    """One experiment's fold result: the write (if any), its counts and its rejects."""

    write: Write | None = None
    report: BatchReport = field(default_factory=BatchReport)
    rejects: list[Rejected] = field(default_factory=list)
    change_points: list[ChangePointDetected] = field(default_factory=list)

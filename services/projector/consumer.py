"""The projector: Kafka decisions + rewards + change points -> exactly-once time buckets.

It runs the same Kafka loop as the reward consumer (:mod:`stream_runtime.kafka_loop`;
see :meth:`~stream_runtime.kafka_loop.KafkaBatchProcessor._process` for the long
argument) with its own consumer group and its own offsets in Redis:

poll -> decode -> one atomic read per experiment (config, applied offsets, dedupe keys)
-> drop records at/below the applied offset -> project (pure) -> one compare-and-set
Lua script per experiment writing bucket increments + offsets + dedupe keys together
-> only then commit the Kafka offsets.

A crash before the Redis write changes nothing (Kafka redelivers); a crash between the
write and the commit redelivers records whose offsets are stored, so they are dropped.

Records it cannot project (undecodable, unknown experiment or arm, arm mismatch) are
*skipped*: counted by reason in its stats and logged once per batch, never
dead-lettered. The reward consumer reads the same rewards and decisions with the same
rules and owns the DLQ for them, so each bad record is parked exactly once.
Plain aiokafka with ``enable_auto_commit=False`` for the same reason as the consumer:
the commit must name the offsets of the batch we wrote, strictly after the write.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.rejections import Rejection
from schemas.topics import TopicNames
from services.projector.projection import (
    Positioned,
    Projection,
    RecordLike,
    Rejected,
    Retention,
    batch_dedupe_keys,
    decode_batch,
    filter_applied,
    project,
)
from services.projector.settings import ProjectorSettings
from services.projector.store import Loaded, ProjectorStore, Write
from stream_runtime.batch import (
    MAX_CAS_ATTEMPTS,
    CasConflictError,
    SummableReport,
    gc_deferred,
    parse_config,
    write_until_settled,
)
from stream_runtime.kafka_loop import KafkaBatchProcessor
from stream_runtime.redis_client import AnyRedis

__all__ = [
    "MAX_CAS_ATTEMPTS",
    "BatchReport",
    "CasConflictError",
    "Projector",
    "ProjectorHandler",
]

log = logging.getLogger("services.projector")


@dataclass(slots=True)
class BatchReport(SummableReport):
    """What one batch did; the projector sums these into its running stats."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    expired: int = 0
    ignored: int = 0
    redelivered: int = 0
    conflicts: int = 0
    #: Skipped records by reason (the reward consumer dead-letters them, not we).
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Plan:
    write: Write | None = None
    redelivered: int = 0
    projection: Projection | None = None
    rejects: list[Rejected] = field(default_factory=list)


class ProjectorHandler:
    """Projects poll batches into Redis buckets exactly once. No Kafka in here, so tests
    can feed it hand-made records."""

    def __init__(self, store: ProjectorStore, topics: TopicNames, retention: Retention) -> None:
        self.store = store
        self.topics = topics
        self.retention = retention

    def _plan(self, exp: str, items: list[Positioned], loaded: Loaded, now: float) -> _Plan:
        plan = _Plan()
        fresh, plan.redelivered = filter_applied(items, loaded.offsets)
        if not fresh:
            return plan
        config = parse_config(loaded.config, log)
        if config is None:
            # No config: not an experiment (the decider writes it before any event).
            # Write nothing, so a flood of made-up ids creates no keys.
            plan.rejects = [Rejected(p.record, Rejection.UNKNOWN_EXPERIMENT) for p in fresh]
            return plan
        projection = project(fresh, config, loaded.seen, self.retention, now)
        plan.projection = projection
        plan.rejects = projection.rejects
        plan.write = Write(exp, loaded.offsets, projection)
        return plan

    async def handle(self, records: Sequence[RecordLike], now: float | None = None) -> BatchReport:
        """Project one poll batch into Redis. Raises on I/O errors (the caller retries).

        Skipped records are counted (and logged once per batch) only after every write
        succeeded, so a retried batch does not count them twice. The cyclic collector
        is held off for the batch (see :func:`stream_runtime.batch.gc_deferred`);
        :meth:`_handle` has returned, so its frame and the batch's objects are freed,
        before it runs again.
        """
        with gc_deferred():
            return await self._handle(records, now)

    async def _handle(self, records: Sequence[RecordLike], now: float | None) -> BatchReport:
        report = BatchReport(records=len(records))
        decoded = decode_batch(records, self.topics)
        report.ignored = decoded.ignored
        rejects: list[Rejected] = list(decoded.rejected)

        async def attempt(pending: dict[str, list[Positioned]]) -> set[str]:
            t = time.time() if now is None else now
            loaded = await self.store.load(
                {exp: batch_dedupe_keys(items) for exp, items in pending.items()}
            )
            plans = {exp: self._plan(exp, it, loaded[exp], t) for exp, it in pending.items()}
            writes = [p.write for p in plans.values() if p.write is not None]
            conflicted = set(await self.store.write(writes, t))
            for exp, plan in plans.items():
                if exp in conflicted:
                    continue
                report.redelivered += plan.redelivered
                if plan.projection is not None:
                    report.applied += plan.projection.applied
                    report.duplicates += plan.projection.duplicates
                    report.expired += plan.projection.expired
                rejects.extend(plan.rejects)
            return conflicted

        report.conflicts += await write_until_settled(decoded.by_experiment, attempt, log)
        for r in rejects:
            report.rejected[r.reason] += 1
        if rejects:
            first = rejects[0].record
            log.info(
                "records skipped (dead-lettered by the reward consumer)",
                extra={
                    "skipped": dict(report.rejected),
                    "first": f"{first.topic}:{first.partition}:{first.offset}",
                },
            )
        return report


class Projector(KafkaBatchProcessor[BatchReport]):
    """Embeddable projector: ``await start()`` / ``await stop()``, or ``await run(event)``."""

    name = "projector"

    def __init__(self, settings: ProjectorSettings) -> None:
        super().__init__(settings, log)
        self.settings = settings
        self.topics = settings.topics
        self.stats = BatchReport()
        self._redis: AnyRedis | None = None
        self._handler: ProjectorHandler | None = None

    @property
    def subscribed(self) -> list[str]:
        return [self.topics.rewards, self.topics.decisions, self.topics.experiments]

    async def _open_resources(self) -> None:
        s = self.settings
        self._redis = s.redis_client()
        await self._redis.ping()  # fail fast at start-up
        self._handler = ProjectorHandler(
            ProjectorStore(self._redis, s.keys, s.retention),
            self.topics,
            s.retention,
        )

    async def _close_resources(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _handle(self, records: list[RecordLike]) -> BatchReport:
        """Write to Redis; the base class commits after it, or seeks back on failure."""
        assert self._handler is not None
        return await self._handler.handle(records)

    def _stats_extra(self) -> dict[str, object]:
        s = self.stats
        return {
            **s.as_dict(),
            "batches": self.batches,
            "records_per_s_in_handler": round(s.records / self.handle_seconds)
            if self.handle_seconds
            else None,
        }

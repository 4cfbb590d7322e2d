"""The projector: Kafka decisions + rewards + change points -> exactly-once time buckets.

It mirrors the reward consumer's loop (see ``services/reward_consumer/consumer.py`` for
the long argument) with its own consumer group and its own offsets in Redis:

poll -> decode -> one atomic read per experiment (config, applied offsets, dedupe keys)
-> drop records at/below the applied offset -> project (pure) -> one compare-and-set
Lua script per experiment writing bucket increments + offsets + dedupe keys together
-> only then commit the Kafka offsets.

A crash before the Redis write changes nothing (Kafka redelivers); a crash between the
write and the commit redelivers records whose offsets are stored, so they are dropped.
Plain aiokafka with ``enable_auto_commit=False`` for the same reason as the consumer:
the commit must name the offsets of the batch we wrote, strictly after the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from pydantic import ValidationError
from redis.asyncio import Redis

from schemas.events import ExperimentConfig
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

log = logging.getLogger("services.projector")

#: Where rejected records go. Today: a log line; the DLQ issue plugs a producer in here.
DeadLetterSink = Callable[[RecordLike, str], Awaitable[None]]

#: Fetch sizing (aiokafka defaults: 1 MiB per partition, 50 MiB per fetch, min 1 byte).
#: A poll batch is ``mab_projector_max_batch_records`` (5,000) records of ~200-400 bytes,
#: i.e. ~1-2 MiB: with 4 MiB per partition one fetch response of a backlogged partition
#: fills a whole batch, so ``getmany`` rarely waits on a second round trip mid-catch-up.
#: 32 MiB per fetch bounds the memory of a fetch across many partitions (a handful of
#: batches buffered, not fifty MiB per broker). ``fetch_min_bytes`` 64 KiB with a 100 ms
#: wait lets the broker gather a few hundred records per response at low rates instead of
#: answering every few records (each response costs a round trip and Python overhead);
#: it adds at most 100 ms of latency to a quiet time series, which is fine for buckets
#: of a minute or an hour.
MAX_PARTITION_FETCH_BYTES: Final = 4 * 1024 * 1024
FETCH_MAX_BYTES: Final = 32 * 1024 * 1024
FETCH_MIN_BYTES: Final = 64 * 1024
FETCH_MAX_WAIT_MS: Final = 100

#: Compare-and-set conflicts in a row before the batch fails (and is retried).
MAX_CAS_ATTEMPTS = 5
PROGRESS_EVERY_S = 10.0


@contextlib.contextmanager
def _gc_deferred() -> Iterator[None]:
    """Hold the cyclic garbage collector off while one batch is handled.

    Decoding a batch keeps thousands of fresh container objects (models, their field
    sets, :class:`Positioned`) alive at once; with the default thresholds that triggers
    dozens of young-generation passes per batch, which promote the batch into the old
    generation and set off full collections over the whole heap (measured: ~20% of the
    handler's time, then still ~8% when only the synchronous steps were covered, since
    the first pass after them scans the live batch). None of it is cyclic garbage: it
    is freed by reference counting when the batch is done, which is why the collector
    is re-enabled only after that. Other tasks of the loop (aiokafka's fetcher) may
    run during the batch's awaits; they merely allocate without triggering a pass for
    those few milliseconds, and anything cyclic is collected on the next pass. The
    collector is re-enabled on the way out (even on error) unless it was off already.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class CasConflictError(RuntimeError):
    """An experiment kept changing under us; the batch is retried from the log."""


async def log_dead_letter(record: RecordLike, reason: str) -> None:
    """Default sink: a structured warning (the DLQ producer replaces it later)."""
    log.warning(
        "record skipped",
        extra={
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason,
        },
    )


@dataclass(slots=True)
class BatchReport:
    """What one batch did; the projector sums these into its running stats."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    expired: int = 0
    ignored: int = 0
    redelivered: int = 0
    conflicts: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, o: BatchReport) -> None:
        self.records += o.records
        self.applied += o.applied
        self.duplicates += o.duplicates
        self.expired += o.expired
        self.ignored += o.ignored
        self.redelivered += o.redelivered
        self.conflicts += o.conflicts
        self.rejected.update(o.rejected)


def _parse_config(raw: bytes | None) -> ExperimentConfig | None:
    if raw is None:
        return None
    try:
        return ExperimentConfig.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError):
        log.exception("unreadable config key; treating experiment as unknown")
        return None


@dataclass(slots=True)
class _Plan:
    write: Write | None = None
    redelivered: int = 0
    projection: Projection | None = None
    rejects: list[Rejected] = field(default_factory=list)


class ProjectorHandler:
    """Projects poll batches into Redis buckets exactly once. No Kafka in here, so tests
    (and a later DLQ re-drive) can feed it hand-made records."""

    def __init__(
        self,
        store: ProjectorStore,
        topics: TopicNames,
        retention: Retention,
        dead_letter: DeadLetterSink = log_dead_letter,
    ) -> None:
        self.store = store
        self.topics = topics
        self.retention = retention
        self.dead_letter = dead_letter

    def _plan(self, exp: str, items: list[Positioned], loaded: Loaded, now: float) -> _Plan:
        plan = _Plan()
        fresh, plan.redelivered = filter_applied(items, loaded.offsets)
        if not fresh:
            return plan
        config = _parse_config(loaded.config)
        if config is None:
            # No config: not an experiment (the decider writes it before any event).
            # Write nothing, so a flood of made-up ids creates no keys.
            plan.rejects = [Rejected(p.record, "unknown_experiment") for p in fresh]
            return plan
        projection = project(fresh, config, loaded.seen, self.retention, now)
        plan.projection = projection
        plan.rejects = projection.rejects
        plan.write = Write(exp, loaded.offsets, projection)
        return plan

    async def handle(self, records: Sequence[RecordLike], now: float | None = None) -> BatchReport:
        """Project one poll batch into Redis. Raises on I/O errors (the caller retries).

        Dead letters go out only after every write succeeded, so a retried batch does
        not report its rejects twice. The cyclic collector is held off for the batch (see
        :func:`_gc_deferred`); :meth:`_handle` has returned, so its frame and the batch's
        objects are freed, before it runs again.
        """
        with _gc_deferred():
            return await self._handle(records, now)

    async def _handle(self, records: Sequence[RecordLike], now: float | None) -> BatchReport:
        report = BatchReport(records=len(records))
        decoded = decode_batch(records, self.topics)
        report.ignored = decoded.ignored
        rejects: list[Rejected] = list(decoded.rejected)
        pending = decoded.by_experiment
        for _attempt in range(MAX_CAS_ATTEMPTS):
            if not pending:
                break
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
            if conflicted:
                report.conflicts += len(conflicted)
                log.warning(
                    "offset compare-and-set conflict, reloading",
                    extra={"experiments": sorted(conflicted)},
                )
            pending = {exp: pending[exp] for exp in conflicted}
        if pending:
            raise CasConflictError(f"experiments kept conflicting: {sorted(pending)}")
        for r in rejects:
            report.rejected[r.reason] += 1
            await self.dead_letter(r.record, r.reason)
        return report


class _RebalanceLogger(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs partition moves; correctness never depends on it (CAS + offset filter)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked", extra={"partitions": sorted(map(str, revoked))})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(map(str, assigned))})


def _first_offsets(records: Sequence[RecordLike]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        if tp not in out or r.offset < out[tp]:
            out[tp] = r.offset
    return out


def _commit_offsets(records: Sequence[RecordLike]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out


class Projector:
    """Embeddable projector: ``await start()`` / ``await stop()``, or ``await run(event)``."""

    def __init__(
        self, settings: ProjectorSettings, *, dead_letter: DeadLetterSink = log_dead_letter
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.dead_letter = dead_letter
        self.stats = BatchReport()
        self.batches = 0
        self.handle_seconds = 0.0  # wall time inside handle(): the fold-rate figure
        self._consumer: AIOKafkaConsumer | None = None
        self._redis: Redis | None = None
        self._handler: ProjectorHandler | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_progress = time.monotonic()

    @property
    def subscribed(self) -> list[str]:
        return [self.topics.rewards, self.topics.decisions, self.topics.experiments]

    async def start(self) -> None:
        await self._open()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stop), name="projector")

    async def stop(self) -> None:
        """Finish (and commit) the batch in flight, leave the group, close connections."""
        self._stop.set()
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None
        await self._close()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (SIGTERM in ``__main__``)."""
        await self._open()
        try:
            await self._loop(stop)
        finally:
            await self._close()

    async def _open(self) -> None:
        s = self.settings
        self._redis = Redis.from_url(s.redis_url, decode_responses=False)
        await self._redis.ping()  # fail fast at start-up
        self._handler = ProjectorHandler(
            ProjectorStore(self._redis, s.keys, s.retention),
            self.topics,
            s.retention,
            self.dead_letter,
        )
        group = s.mab_projector_group_id
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=group,
            client_id=f"{group}-{id(self):x}",
            enable_auto_commit=False,  # we commit explicitly, after the Redis write
            auto_offset_reset="earliest",  # a new group rebuilds from the system of record
            isolation_level="read_committed",
            max_poll_records=s.mab_projector_max_batch_records,
            max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
            fetch_max_bytes=FETCH_MAX_BYTES,
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=s.mab_projector_session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.mab_projector_session_timeout_ms // 4),
        )
        self._consumer.subscribe(self.subscribed, listener=_RebalanceLogger())
        await self._consumer.start()
        log.info("projector started", extra={"group_id": group, "topics": self.subscribed})

    async def _close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        log.info("projector stopped", extra=self._stats_extra())

    async def _loop(self, stop: asyncio.Event) -> None:
        # ``stop`` is checked between batches only: SIGTERM never splits write -> commit.
        while not stop.is_set():
            await self.poll_once(stop)

    async def poll_once(self, stop: asyncio.Event | None = None) -> int:
        assert self._consumer is not None
        polled = await self._consumer.getmany(
            timeout_ms=self.settings.mab_projector_poll_timeout_ms,
            max_records=self.settings.mab_projector_max_batch_records,
        )
        records: list[RecordLike] = [r for recs in polled.values() for r in recs]
        if records:
            await self._process(records, stop)
        self._maybe_log_progress()
        return len(records)

    async def _process(self, records: list[RecordLike], stop: asyncio.Event | None) -> None:
        """Write to Redis, then commit. On failure: seek back, pause, retry (no commit)."""
        assert self._handler is not None
        started = time.perf_counter()
        try:
            report = await self._handler.handle(records)
        except Exception:
            log.exception("batch failed; rewinding to retry", extra={"records": len(records)})
            self._rewind(records)
            await self._sleep(self.settings.mab_projector_retry_backoff_s, stop)
            return
        self.handle_seconds += time.perf_counter() - started
        await self._commit(records)
        self.stats.add(report)
        self.batches += 1

    def _rewind(self, records: list[RecordLike]) -> None:
        assert self._consumer is not None
        for (topic, partition), offset in _first_offsets(records).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition), offset)
            except (IllegalStateError, AssertionError):
                log.info("partition lost before rewind", extra={"topic": topic})

    async def _commit(self, records: list[RecordLike]) -> None:
        assert self._consumer is not None
        offsets = {TopicPartition(t, p): o for (t, p), o in _commit_offsets(records).items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit rejected after a rebalance (safe)", extra={"error": repr(exc)})
        except KafkaError as exc:
            log.warning("commit failed (next one covers it)", extra={"error": repr(exc)})

    async def _sleep(self, seconds: float, stop: asyncio.Event | None) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    def _stats_extra(self) -> dict[str, object]:
        s = self.stats
        return {
            "records": s.records,
            "applied": s.applied,
            "duplicates": s.duplicates,
            "expired": s.expired,
            "ignored": s.ignored,
            "redelivered": s.redelivered,
            "conflicts": s.conflicts,
            "rejected": dict(s.rejected),
            "batches": self.batches,
            "records_per_s_in_handler": round(s.records / self.handle_seconds)
            if self.handle_seconds
            else None,
        }

    def _maybe_log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            log.info("progress", extra=self._stats_extra())

"""The reward consumer: Kafka rewards + decisions -> exactly-once folded snapshots in Redis.

Why aiokafka directly and not FastStream
----------------------------------------
We checked FastStream 0.7's Kafka batch subscriber (``batch=True``). It does hand out
the raw ``ConsumerRecord`` tuple and can run without its app runner, but its commit
semantics are the wrong shape for an exactly-once fold:

* its ack is ``consumer.commit()`` with no offsets, i.e. "whatever the consumer has
  fetched so far", not "the offsets of the batch I just wrote to Redis";
* ``AckPolicy.ACK`` acks (commits) even when the handler raised, ``REJECT_ON_ERROR``
  commits too (reject == ack on Kafka), and the default ``ACK_FIRST`` commits before
  the handler runs: all three lose a batch whose Redis write failed. Only
  ``NACK_ON_ERROR`` (seek back on error) is safe, and that guarantee would hinge on
  middleware internals rather than on code we can read in one screen;
* ``TestKafkaBroker`` fakes partitions, offsets and commits, so it could not test the
  property that matters here anyway.

So this module owns a plain ``AIOKafkaConsumer`` with ``enable_auto_commit=False``,
``getmany`` batches and explicit per-partition commits made strictly *after* the Redis
write. The equivalent FastStream choice would be ``AckPolicy.NACK_ON_ERROR`` with
``auto_commit=False``; we keep the explicit loop.

The loop (and why the order is what it is)
------------------------------------------
See :meth:`RewardConsumer._process` for the full argument; in short:
poll -> decode -> atomic read -> drop records at/below the stored applied offset ->
fold -> one compare-and-set Lua script per experiment writing snapshot + offsets +
dedupe keys together -> only then commit the Kafka offsets. A crash at any point
either loses nothing (no commit yet: Kafka redelivers) or doubles nothing (the stored
offsets make the redelivered records a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from redis.asyncio import Redis

from schemas.codec import encode
from schemas.events import ChangePointDetected
from services.reward_consumer.batch import RecordLike, commit_offsets, first_offsets
from services.reward_consumer.handlers import (
    BatchHandler,
    BatchReport,
    DeadLetterSink,
    log_dead_letter,
)
from services.reward_consumer.settings import ConsumerSettings
from services.reward_consumer.store import ConsumerStore

log = logging.getLogger("services.reward_consumer")

#: Seconds between two progress log lines.
PROGRESS_EVERY_S = 10.0


class _RebalanceLogger(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs partition moves. No cache to invalidate: every batch re-reads Redis.

    Correctness across a rebalance does not depend on this listener: a batch that was
    in flight while we lost its partition either fails its compare-and-set (the new
    owner wrote first) or lands before the new owner reads; its Kafka commit then fails
    with ``CommitFailedError``, which we tolerate, and the new owner's redelivery is
    dropped by the offset check.
    """

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked", extra={"partitions": sorted(map(str, revoked))})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(map(str, assigned))})


class RewardConsumer:
    """Embeddable consumer: ``await start()`` / ``await stop()``, or ``await run(event)``."""

    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        dead_letter: DeadLetterSink = log_dead_letter,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.dead_letter = dead_letter
        self.stats = BatchReport()
        self.batches = 0
        self.fold_seconds = 0.0  # wall time inside handle(), for the records/s figure
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._redis: Redis | None = None
        self._handler: BatchHandler | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_progress = time.monotonic()

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect, join the group, and run the loop in a background task."""
        await self._open()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stop), name="reward-consumer")

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
        """Run until ``stop`` is set (the ``__main__`` entry point's SIGTERM handler)."""
        await self._open()
        try:
            await self._loop(stop)
        finally:
            await self._close()

    async def _open(self) -> None:
        s = self.settings
        self._redis = Redis.from_url(s.redis_url, decode_responses=False)
        await self._redis.ping()  # fail fast at start-up, not inside the first batch
        # Our own producer for ChangePointDetected: acks=all, idempotent, so a publish
        # that returned survives a broker failover and a retried send is not doubled.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{s.group_id}-cp-{id(self):x}",
            acks="all",
            enable_idempotence=True,
        )
        await self._producer.start()
        self._handler = BatchHandler(
            ConsumerStore(self._redis, s.keys),
            self.topics,
            self.dead_letter,
            self._publish_change_points,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.group_id,
            client_id=f"{s.group_id}-{id(self):x}",
            enable_auto_commit=False,  # we commit explicitly, after the Redis write
            auto_offset_reset="earliest",  # a new group starts from the system of record
            isolation_level="read_committed",
            max_poll_records=s.max_batch_records,
            session_timeout_ms=s.mab_session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.mab_session_timeout_ms // 4),
        )
        self._consumer.subscribe(
            [self.topics.rewards, self.topics.decisions], listener=_RebalanceLogger()
        )
        await self._consumer.start()
        log.info(
            "reward consumer started",
            extra={
                "group_id": s.group_id,
                "topics": [self.topics.rewards, self.topics.decisions],
            },
        )

    async def _close(self) -> None:
        if self._consumer is not None:
            # enable_auto_commit=False: stopping commits nothing behind our back; every
            # processed batch was committed right after its Redis write.
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        log.info("reward consumer stopped", extra=self._stats_extra())

    # ----------------------------------------------------------------- loop
    async def _loop(self, stop: asyncio.Event) -> None:
        # ``stop`` is only looked at between batches: a SIGTERM never interrupts the
        # write -> commit sequence, so a clean shutdown always commits what it wrote.
        while not stop.is_set():
            await self.poll_once(stop)

    async def poll_once(self, stop: asyncio.Event | None = None) -> int:
        """Poll one batch and process it; returns the number of records polled."""
        assert self._consumer is not None
        polled = await self._consumer.getmany(
            timeout_ms=self.settings.poll_timeout_ms,
            max_records=self.settings.max_batch_records,
        )
        records: list[RecordLike] = [r for recs in polled.values() for r in recs]
        if records:
            await self._process(records, stop)
        self._maybe_log_progress()
        return len(records)

    async def _process(self, records: list[RecordLike], stop: asyncio.Event | None) -> None:
        """Fold one batch into Redis, then commit it to Kafka. The order is the design.

        1. Nothing is committed to Kafka before step 3. If we crash (SIGKILL, OOM, node
           loss) anywhere before the commit, the group's committed offset still points
           at or before this batch, so Kafka redelivers it to whoever owns the
           partition next: at-least-once delivery, never a lost record.

        2. ``handler.handle`` reads each experiment's snapshot *together with* the
           last-applied offset per (topic, partition) that was stored atomically with
           it, drops every record at or below that offset, folds the rest and writes
           snapshot + new offsets + dedupe keys in ONE Lua script (atomic per
           experiment). So for any experiment, Redis holds either the state before
           this batch with the old offsets, or the state after it with the new ones,
           never a mix. A redelivered record is therefore at or below the stored
           offset exactly when its effect is already in the snapshot: redelivery is a
           no-op, which turns at-least-once delivery into an exactly-once fold.
           The script is also a compare-and-set on those offsets: a zombie consumer
           that lost the partition in a rebalance but still finishes its batch cannot
           overwrite the new owner's newer snapshot; it reloads and (usually) finds
           nothing left to apply.

        3. Only after every write of the batch succeeded do we commit, per partition,
           the offset after the batch's last record. Committing earlier (FastStream's
           ACK_FIRST, or auto-commit on a timer) would make a crash between commit and
           write lose the batch: at-most-once. The commit is an optimisation of
           restart time, not part of correctness: if it fails (we were rebalanced
           away), the new owner redelivers and step 2 drops what we already applied.

        If step 2 raises (Redis down, script error), we must not commit and must not
        move on either: the consumer's position is already past the batch, and the
        next batch's commit would silently skip it. So we seek every partition of the
        batch back to its first record and retry after a pause; already-written
        experiments of a half-done batch are skipped by the offset check on retry.
        """
        assert self._handler is not None
        started = time.perf_counter()
        try:
            report = await self._handler.handle(records)
        except Exception:
            log.exception("batch failed; rewinding to retry", extra={"records": len(records)})
            self._rewind(records)
            await self._sleep(self.settings.retry_backoff_s, stop)
            return
        self.fold_seconds += time.perf_counter() - started
        await self._commit(records)
        self.stats.add(report)
        self.batches += 1

    async def _publish_change_points(self, events: Sequence[ChangePointDetected]) -> None:
        """Publish change points to the experiments topic, keyed by experiment id.

        Called by the handler after the Redis write and before the Kafka commit. The
        records are already folded, so a failure here must not fail the batch (its
        redelivery would be dropped by the offset check and the event lost): we retry
        until the broker takes them (at-least-once; the ids are deterministic, see
        :func:`~services.reward_consumer.handlers.change_point_event`). Known gap: a
        crash between the Redis write and this publish loses the events; replay of the
        rewards recomputes them.
        """
        assert self._producer is not None
        while True:
            try:
                futures = [
                    await self._producer.send(
                        self.topics.experiments,
                        encode(ev),
                        key=ev.experiment_id.encode(),
                    )
                    for ev in events
                ]
                await asyncio.gather(*futures)
                return
            except KafkaError as exc:
                log.warning("change point publish failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(self.settings.retry_backoff_s)

    def _rewind(self, records: list[RecordLike]) -> None:
        assert self._consumer is not None
        for (topic, partition), offset in first_offsets(records).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition), offset)
            except (IllegalStateError, AssertionError):
                # No longer ours (rebalanced away): its new owner starts from the
                # committed offset, which is before this batch.
                log.info(
                    "partition lost before rewind", extra={"topic": topic, "partition": partition}
                )

    async def _commit(self, records: list[RecordLike]) -> None:
        assert self._consumer is not None
        offsets = {TopicPartition(t, p): o for (t, p), o in commit_offsets(records).items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit rejected after a rebalance (safe)", extra={"error": repr(exc)})
        except KafkaError as exc:
            # A transient broker error: the next batch's commit covers these offsets,
            # and a crash before it only causes a redelivery the offset check absorbs.
            log.warning(
                "commit failed (will be covered by the next one)", extra={"error": repr(exc)}
            )

    @staticmethod
    async def _sleep(seconds: float, stop: asyncio.Event | None) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    # ----------------------------------------------------------------- stats
    def _stats_extra(self) -> dict[str, object]:
        s = self.stats
        return {
            "records": s.records,
            "applied": s.applied,
            "duplicates": s.duplicates,
            "redelivered": s.redelivered,
            "conflicts": s.conflicts,
            "change_points": s.change_points,
            "rejected": dict(s.rejected),
            "batches": self.batches,
            "records_per_s": round(s.records / self.fold_seconds) if self.fold_seconds else 0,
        }

    def _maybe_log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            log.info("progress", extra=self._stats_extra())

"""The Kafka batch loop of the engine: poll -> handle -> commit.

Why not FastStream
------------------
We checked FastStream 0.7's Kafka batch subscriber (``batch=True``). It does hand out
the raw records and can run without its app runner, but its commit semantics are the
wrong shape for an exactly-once fold:

* its ack is ``consumer.commit()`` with no offsets, i.e. "whatever the consumer has
  fetched so far", not "the offsets of the batch I just wrote to Redis";
* ``AckPolicy.ACK`` acks (commits) even when the handler raised, ``REJECT_ON_ERROR``
  commits too (reject == ack on Kafka), and the default ``ACK_FIRST`` commits before
  the handler runs: all three lose a batch whose Redis write failed. Only
  ``NACK_ON_ERROR`` (seek back on error) is safe, and that guarantee would hinge on
  middleware internals rather than on code we can read in one screen;
* ``TestKafkaBroker`` fakes partitions, offsets and commits, so it could not test the
  property that matters here anyway.

Why librdkafka (``confluent-kafka``) and not aiokafka: see :mod:`stream_runtime.
kafka_consumer`. Its blocking calls run in a worker thread (``asyncio.to_thread``), and
rebalance callbacks fire inside ``consume``, i.e. in that thread (possibly while a batch
is being written, see the poll ahead below).

So this module owns a plain librdkafka consumer with ``enable.auto.commit=false``,
batch polls and explicit per-partition commits issued strictly *after* the Redis write.
The equivalent FastStream choice would be ``AckPolicy.NACK_ON_ERROR`` with
``auto_commit=False``; we keep the explicit loop.

The loop (and why the order is what it is)
------------------------------------------
See :meth:`KafkaBatchProcessor._process` for the full argument; in short:
poll -> the engine (:class:`~stream_runtime.engine.BatchEngine`: decode, read, drop
records at/below the stored applied offset, apply, one compare-and-set write per
experiment of state + offsets + dedupe keys together) -> only then commit the Kafka
offsets. A crash at any point either loses nothing (no commit yet: Kafka redelivers)
or doubles nothing (the stored offsets make the redelivered records a no-op).

One step is pipelined: while batch N is in the engine (mostly: while its Redis write is
awaited), the next batch is polled and decoded, the pure part of the work::

    batch N:    apply -> write ............ -> commit N
    batch N+1:           poll + decode (ahead) -> apply -> write ....... -> commit N+1
    batch N+2:                                           poll + decode (ahead) -> ...

Everything that touches state stays strictly in order: N+1 is applied only after N's
write landed, and each commit only after the write of the records it covers. If N
fails, the batch polled ahead is thrown away and both are read again
(:meth:`KafkaBatchProcessor._process` says why that matters).

A service subclasses :class:`KafkaBatchProcessor` and supplies its resources and its
engine (:meth:`~KafkaBatchProcessor._open_resources`) and its stats; the ordering lives
only here.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Final, Generic

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from stream_runtime.batch import DecodedBatch, RecordLike, commit_offsets, first_offsets
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_connection import (
    ClientErrors,
    new_client,
    wait_until_reachable,
)
from stream_runtime.kafka_consumer import (
    TUNED_FETCH,
    FetchSizing,
    RebalanceLogger,
    group_consumer_config,
    partition_lag,
    seek_back,
    take_queued,
    to_records,
)
from stream_runtime.metrics import LAG_EVERY_S, ProcessorMetrics
from stream_runtime.processor import ReportT
from stream_runtime.redis_client import AnyRedis
from stream_runtime.settings import LoopSettings, ServiceSettings

#: Seconds between two progress log lines.
PROGRESS_EVERY_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Polled:
    """One poll's records and what :meth:`KafkaBatchProcessor._decode` made of them."""

    records: list[RecordLike]
    decoded: DecodedBatch


class KafkaBatchProcessor(abc.ABC, Generic[ReportT]):
    """Embeddable processor: ``await start()`` / ``await stop()``, or ``await run(event)``.

    Subclasses provide :attr:`name` (log lines, task name), :attr:`subscribed`,
    :meth:`_open_resources` (which returns the engine a batch goes through) and
    :meth:`_close_resources`, :attr:`stats` (a report the committed batches' reports are
    added to) and :meth:`_stats_extra`.
    """

    #: Human name in log lines ("reward consumer", "projector") and the task name.
    name: str = "stream processor"
    #: Running totals of committed batches (subclasses create it with their report type).
    stats: ReportT

    def __init__(
        self,
        settings: LoopSettings,
        log: logging.Logger,
        *,
        fetch: FetchSizing = TUNED_FETCH,
    ) -> None:
        self.loop_settings = settings
        self.log = log
        self.fetch = fetch
        self.batches = 0
        self.handle_seconds = 0.0  # wall time inside _handle(), for the records/s figure
        #: The engine batches go through (built by :meth:`_open_resources`).
        self.engine: BatchEngine[ReportT] | None = None
        #: The state's Redis client (:meth:`_open_redis`, :meth:`_close_redis`).
        self._redis: AnyRedis | None = None
        self._consumer: Consumer | None = None
        self._errors: ClientErrors | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_progress = time.monotonic()
        self._last_lag = 0.0
        #: Offsets of processed batches (next offset to read per partition), committed
        #: asynchronously after each batch and once more, synchronously, on close.
        self._processed: dict[tuple[str, int], int] = {}
        #: The batch polled and decoded while the previous one was written; processed
        #: next, or dropped (never committed) on close.
        self._ahead: Polled | None = None
        #: Partition moves seen by the consumer's callbacks, and those the loop has
        #: acted on (:meth:`_rebalanced`, :meth:`_settle_moves`).
        self._moves = 0
        self._moves_settled = 0
        #: Served on ``MAB_METRICS_PORT`` by :func:`stream_runtime.process.run_until_signal`.
        self.metrics = ProcessorMetrics()

    # ----------------------------------------------------------------- service hooks
    @property
    @abc.abstractmethod
    def subscribed(self) -> list[str]: ...

    @abc.abstractmethod
    async def _open_resources(self) -> BatchEngine[ReportT]:
        """Connect Redis (and producers) and build the engine; before joining the group."""

    @abc.abstractmethod
    async def _close_resources(self) -> None:
        """Close what :meth:`_open_resources` opened; after leaving the group."""

    async def _open_redis(self, settings: ServiceSettings) -> AnyRedis:
        """The Redis client of :meth:`_open_resources`, pinged: a wrong URL or a Redis
        that is down fails the start-up, not the first batch."""
        self._redis = settings.redis_client()
        await self._redis.ping()
        return self._redis

    async def _close_redis(self) -> None:
        """Close the client of :meth:`_open_redis` (if open), from :meth:`_close_resources`."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _decode(self, records: list[RecordLike]) -> DecodedBatch:
        """Decode a polled batch (pure: it may run while the previous batch is written)."""
        assert self.engine is not None
        return self.engine.decode(records)

    async def _handle(self, records: list[RecordLike], decoded: DecodedBatch) -> ReportT:
        """Apply one batch (``decoded``: :meth:`_decode` of ``records``) through the
        engine; raises on failure. Commits nothing."""
        assert self.engine is not None
        return await self.engine.handle(records, decoded=decoded)

    def _rebalanced(self) -> None:
        """Partitions were assigned or revoked: only counted here, acted on by
        :meth:`_settle_moves`.

        librdkafka calls this inside ``consume``, i.e. in a poll's worker thread, and the
        poll ahead runs while the event loop may be inside the engine with the batch
        before it; touching the engine's cache from this thread could race with it.
        """
        self._moves += 1

    def _settle_moves(self) -> bool:
        """Act on the partition moves since the last call (on the event loop, once the
        poll that saw them has returned and no batch is in the engine); whether there
        were any.

        Keeps the engine's cache to the partitions we own (every write checks it anyway,
        see :mod:`stream_runtime.engine`), and the offsets to commit on close to batches
        processed since (a partition that came back must not get an older offset of ours
        committed over its last owner's).
        """
        if self._moves == self._moves_settled:
            return False
        self._moves_settled = self._moves
        self._processed.clear()
        if self.engine is not None:
            self.engine.forget()
        return True

    def _account(self, report: ReportT) -> None:
        """Add a committed batch's report to the running stats."""
        self.stats.add(report)

    @abc.abstractmethod
    def _stats_extra(self) -> dict[str, object]: ...

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect, join the group, and run the loop in a background task."""
        await self._open()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stop), name=self.name)

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

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings on top of the connection's (:func:`~stream_runtime.
        kafka_consumer.group_consumer_config`)."""
        s = self.loop_settings
        return group_consumer_config(
            s.group_id,
            f"{s.group_id}-{id(self):x}",
            s.session_timeout_ms,
            self.fetch,
            self._committed,
        )

    def _committed(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Result of an asynchronous commit (served inside ``consume``). A failed one is
        safe: see :meth:`_commit`."""
        if err is not None:
            self.log.warning("commit failed (safe, see _commit)", extra={"error": str(err)})

    async def _open(self) -> None:
        """Reach Kafka first, then open the service's resources, then join the group.

        A rejected password or certificate raises :class:`~stream_runtime.kafka_connection.
        KafkaConnectionError` here, before anything else is opened, instead of leaving
        librdkafka to retry it forever in the background.
        """
        s = self.loop_settings
        consumer, errors = new_client(
            Consumer, s.connection(), self.consumer_config(), log=self.log
        )
        try:
            await asyncio.to_thread(wait_until_reachable, consumer, errors)
            self.engine = await self._open_resources()
        except BaseException:
            await asyncio.to_thread(consumer.close)
            raise
        self._errors = errors
        listener = RebalanceLogger(self.log, self._rebalanced)
        consumer.subscribe(
            self.subscribed, on_assign=listener.on_assign, on_revoke=listener.on_revoke
        )
        self._consumer = consumer
        self.log.info(
            f"{self.name} started", extra={"group_id": s.group_id, "topics": self.subscribed}
        )

    async def _close(self) -> None:
        # A batch polled ahead was not written: drop it, its records are read again from
        # the committed offsets (kept, it would be applied ahead of them on a restart).
        self._ahead = None
        if self._consumer is not None:
            # enable.auto.commit=false: closing commits nothing behind our back. The
            # processed batches' offsets are committed once more, synchronously, for
            # the partitions still ours, so a clean stop leaves the group at the end of
            # what it wrote; then the group is left at once, so the partitions move
            # without waiting for a session timeout.
            await asyncio.to_thread(self._commit_processed)
            await asyncio.to_thread(self._consumer.close)
            self._consumer = None
        await self._close_resources()
        self.log.info(f"{self.name} stopped", extra=self._stats_extra())

    def _commit_processed(self) -> None:
        consumer = self._consumer
        if consumer is None or not self._processed:
            return
        try:
            owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            offsets = [
                TopicPartition(t, p, o) for (t, p), o in self._processed.items() if (t, p) in owned
            ]
            if offsets:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.log.warning("commit failed (safe, see _commit)", extra={"error": repr(exc)})

    def partition_lag(self) -> dict[tuple[str, int], int]:
        """Records left per assigned partition (:func:`~stream_runtime.kafka_consumer.
        partition_lag`)."""
        return {} if self._consumer is None else partition_lag(self._consumer)

    # ----------------------------------------------------------------- loop
    async def _loop(self, stop: asyncio.Event) -> None:
        # ``stop`` is only looked at between batches: a SIGTERM never interrupts the
        # write -> commit sequence, so a clean shutdown always commits what it wrote.
        while not stop.is_set():
            await self.poll_once(stop)

    async def poll_once(self, stop: asyncio.Event | None = None) -> int:
        """Process one batch (the one polled ahead, else a fresh poll); returns the
        number of records processed."""
        assert self._consumer is not None
        if self._errors is not None:
            self._errors.raise_if_fatal()
        batch, self._ahead = self._ahead, None
        if batch is None:
            batch = await self._poll(wait=True)
            self._settle_moves()
        if batch.records:
            await self._process(batch, stop)
        await self._maybe_update_lag()
        self._maybe_log_progress()
        return len(batch.records)

    async def _poll(self, *, wait: bool) -> Polled:
        """Poll a batch and decode it.

        ``wait``: block up to the poll timeout for a first record (a poll of its own);
        else take only what is queued already (the poll ahead: at low traffic it must
        not hold up the commit of the batch in flight for a whole poll timeout; during
        a catch-up the queue is full anyway).
        """
        assert self._consumer is not None
        s = self.loop_settings
        timeout_s = s.poll_timeout_ms / 1000 if wait else 0.0
        messages = await asyncio.to_thread(
            take_queued, self._consumer, s.max_batch_records, timeout_s
        )
        records: list[RecordLike] = list(to_records(messages, self.log))
        return Polled(records, self._decode(records))

    async def _process(self, batch: Polled, stop: asyncio.Event | None) -> None:
        """Apply one batch to Redis, then commit it to Kafka. The order is the design.

        1. Nothing is committed to Kafka before step 3. If we crash (SIGKILL, OOM, node
           loss) anywhere before the commit, the group's committed offset still points
           at or before this batch, so Kafka redelivers it to whoever owns the
           partition next: at-least-once delivery, never a lost record.

        2. The engine (:class:`~stream_runtime.engine.BatchEngine`) reads each
           experiment's state (snapshot or buckets) *together with* the last-applied
           offset per (topic, partition) that was stored atomically with it, drops every
           record at or below that offset, applies the rest and writes state + new
           offsets + dedupe keys in ONE Lua script (atomic per experiment). So for any
           experiment, Redis holds either the state before this batch with the old
           offsets, or the state after it with the new ones, never a mix. A redelivered
           record is therefore at or below the stored offset exactly when its effect is
           already in the state: redelivery is a no-op, which turns at-least-once
           delivery into an exactly-once fold. The script is also a compare-and-set on
           those offsets: a zombie consumer that lost the partition in a rebalance but
           still finishes its batch cannot overwrite the new owner's newer state; it
           reloads and (usually) finds nothing left to apply.

        3. Only after every write of the batch succeeded do we commit, per partition,
           the offset after the batch's last record. Committing earlier (FastStream's
           ACK_FIRST, or auto-commit on a timer) would make a crash between commit and
           write lose the batch: at-most-once. The commit is an optimisation of
           restart time, not part of correctness: if it fails (we were rebalanced
           away), the new owner redelivers and step 2 drops what we already applied.
           That is also why it is sent without waiting for the broker's answer
           (:meth:`_commit`).

        If step 2 raises (Redis down, script error), we must not commit and must not
        move on either: the consumer's position is already past the batch, and the
        next batch's commit would silently skip it. So we seek every partition of the
        batch back to its first record and retry after a pause; already-written
        experiments of a half-done batch are skipped by the offset check on retry.

        **The poll ahead.** While step 2 runs (its Redis write is mostly waiting), the
        next batch is polled and decoded (:meth:`_poll`; decoding is pure, so doing it
        early changes nothing) and kept in :attr:`_ahead`; it goes through the engine
        only after this call returned, i.e. after this batch's writes landed (the
        offsets compare-and-set would refuse it before, or apply it out of order). The
        rules that keep this exactly-once:

        * the poll ahead is always awaited before anything else uses the consumer
          (commit, seek, close): librdkafka's calls are not made from two threads at
          once, and partitions move (rebalance callbacks) only inside a poll, so the
          batch polled ahead is always from the assignment as it stands after it;
        * if this batch fails, the batch polled ahead is dropped and the rewind covers
          both: its records lie after the failed ones, and applying them first would
          store offsets past the failed records, which the retry would then drop as
          already applied (lost). Partitions only in the batch ahead are rewound too;
        * if partitions moved during the poll ahead, this batch's offsets are not
          committed (it was written, so that is only a redelivery the offset guard
          drops; committing could move a new owner's committed offset back), and the
          engine's cache is dropped now that no batch is in it (:meth:`_settle_moves`);
        * on stop, only written batches were committed; the batch ahead is dropped on
          close (:meth:`_close`) and read again by whoever owns its partitions next.
        """
        records = batch.records
        started = time.perf_counter()
        poll_ahead = asyncio.create_task(self._poll(wait=False), name=f"{self.name} poll")
        report: ReportT | None = None
        try:
            report = await self._handle(records, batch.decoded)
        except Exception:
            self.metrics.failed_batches.inc()
            self.log.exception("batch failed; rewinding to retry", extra={"records": len(records)})
        finally:
            seconds = time.perf_counter() - started
            polled = await poll_ahead  # also when cancelled: no poll outlives the consumer
        moved = self._settle_moves()
        if report is None:
            self._rewind([*records, *polled.records])
            await self._sleep(self.loop_settings.retry_backoff_s, stop)
            return
        self.handle_seconds += seconds
        if not moved:
            self._commit(records)
        self._account(report)
        self.batches += 1
        self.metrics.batch(len(records), seconds, report)
        self._ahead = polled if polled.records else None

    def _rewind(self, records: list[RecordLike]) -> None:
        assert self._consumer is not None
        seek_back(self._consumer, first_offsets(records), self.log)

    def _commit(self, records: list[RecordLike]) -> None:
        """Commit the batch's offsets without waiting for the broker's answer.

        Issued strictly after the batch's writes landed, which is all that correctness
        asks of a commit (:meth:`_process`, step 3). Waiting for the answer cost the
        reward consumer ~8 ms a batch, a sixth of its time. A commit that fails (we were
        rebalanced away, or a transient broker error; reported by :meth:`_committed`), or
        a crash before it reaches the broker, only makes the next owner redeliver
        records the offset guard then drops; the next batch's commit covers these
        offsets too, and :meth:`_close` commits the last ones synchronously.
        """
        assert self._consumer is not None
        offsets = commit_offsets(records)
        self._processed.update(offsets)
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            self.log.warning("commit failed (safe, see _commit)", extra={"error": repr(exc)})

    @staticmethod
    async def _sleep(seconds: float, stop: asyncio.Event | None) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def _maybe_update_lag(self) -> None:
        """Consumer lag per assigned partition (see :meth:`partition_lag`), at most once
        per second; cached watermarks, so no broker round trip."""
        now = time.monotonic()
        if now - self._last_lag < LAG_EVERY_S or self._consumer is None:
            return
        self._last_lag = now
        self.metrics.set_lag(self.partition_lag())

    def _maybe_log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.log.info("progress", extra=self._stats_extra())

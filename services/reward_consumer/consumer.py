"""The reward consumer: Kafka rewards + decisions -> exactly-once folded snapshots in Redis.

Wiring only. The fold is a processor (:class:`services.reward_consumer.processor.
SnapshotFold`); the engine (:mod:`stream_runtime.engine`) drives it: decode -> read
(or its checked cache) -> drop records at/below the stored applied offset -> fold ->
dead-letter -> one compare-and-set Lua script per experiment writing snapshot + offsets
+ dedupe keys together; the Kafka loop (:mod:`stream_runtime.kafka_loop`) commits the
Kafka offsets only after that, and argues why at
:meth:`stream_runtime.kafka_loop.KafkaBatchProcessor._process`.

This module adds what only the reward consumer has: one durable producer for
``ChangePointDetected`` events, default rewards and dead letters, and the attribution
sweep (:mod:`services.reward_consumer.attribution`) after each batch. Where its side
outputs stand in that order:

* dead letters: handed to the engine as its dead-letter sink, so a record the decoder
  refuses is acknowledged by the DLQ before anything is written, and one the fold
  refuses before the Redis write that stores the offsets past it;
* change points: the engine's output sink, called after every write of the batch
  landed and before the Kafka commit (:meth:`RewardConsumer._publish_change_points`);
* default rewards: appended to the rewards topic by the sweep between batches; a window
  stays open in Redis until the fold reads its default back, so a crash before the
  append only delays it to the next sweep.

* exposures: the same consumer reads the exposures topic; its records go through a
  second engine with the exposure judge (:mod:`services.reward_consumer.exposures`),
  whose decisions are produced, acknowledged, before the write that marks them, and
  whose refusals go to the same DLQ. Both engines handle their part of a poll batch
  before the one Kafka commit.

The reward consumer is the **only** processor that dead-letters records of the rewards
and decisions topics: every record it cannot decode or fold goes to the DLQ topic
(:mod:`stream_runtime.dead_letter`, format in :mod:`schemas.dead_letter`) before its
batch is committed. The projector reads the same records with the same rules and only
counts and logs what it skips, so each bad record is dead-lettered once, not once per
processor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from confluent_kafka import KafkaException
from redis.exceptions import RedisError

from schemas.codec import encode
from schemas.events import (
    AnyEvent,
    ChangePointDetected,
    DecisionMade,
    GuardrailBreached,
    RewardObserved,
    WinnerDeclared,
)
from services.reward_consumer.attribution import AttributionSweeper
from services.reward_consumer.exposures import ExposureJudge, ExposureReport
from services.reward_consumer.processor import FoldReport, SnapshotFold
from services.reward_consumer.settings import ConsumerSettings
from stream_runtime.acked_producer import AckedProducer, OutRecord, ProduceError
from stream_runtime.batch import DeadLetterSink, DecodedBatch, RecordLike
from stream_runtime.dead_letter import DeadLetterProducer, dead_letter_producer
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_loop import KafkaBatchProcessor
from stream_runtime.redis_store import RedisStateStore

log = logging.getLogger("services.reward_consumer")


class RewardConsumer(KafkaBatchProcessor[FoldReport]):
    """Embeddable consumer: ``await start()`` / ``await stop()``, or ``await run(event)``."""

    name = "reward consumer"

    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        dead_letter: DeadLetterSink | None = None,
    ) -> None:
        """``dead_letter`` replaces the DLQ topic as the sink of rejects (tests only)."""
        super().__init__(settings, log)
        self.settings = settings
        self.topics = settings.topics
        self.dead_letter = dead_letter
        self.stats = FoldReport()
        #: Running totals of the exposures topic's committed batches.
        self.exposure_stats = ExposureReport()
        self._judge: BatchEngine[ExposureReport] | None = None
        self._judged: ExposureReport | None = None  # the batch in flight's, until commit
        self._producer: AckedProducer | None = None
        self._sweeper: AttributionSweeper | None = None
        self._next_sweep = 0.0
        self.defaults_logged = 0

    @property
    def fold_seconds(self) -> float:
        """Wall time inside ``handle()``, for the records/s figure."""
        return self.handle_seconds

    @property
    def subscribed(self) -> list[str]:
        return [self.topics.rewards, self.topics.decisions, self.topics.exposures]

    # ----------------------------------------------------------------- resources
    async def _open_resources(self) -> BatchEngine[FoldReport]:
        s = self.settings
        redis = await self._open_redis(s)
        # Our own producer for ChangePointDetected and dead letters: acks=all,
        # idempotent, so a send that returned survives a broker failover and a retried
        # send is not doubled; its request size fits an oversize record's dead letter.
        client_id = f"{s.group_id}-{id(self):x}"
        self._producer = dead_letter_producer(s.connection(), client_id, log)
        await self._producer.start()
        sink = self.dead_letter or DeadLetterProducer(
            self._producer,
            self.topics.rewards_dlq,
            rejected_by=f"{s.group_id}/{client_id}",
            log=log,
        )
        self._sweeper = AttributionSweeper(
            redis, s.keys, self._publish_defaults, s.mab_attribution_idle_grace_s
        )
        store = RedisStateStore(redis)
        self._judge = BatchEngine(
            ExposureJudge(self.topics, s.keys, s.mab_allocation_retention_s),
            store,
            log=log,
            dead_letter=sink,
            outputs=self._publish_decisions,
            outputs_first=True,
            # Every batch names new exposure ids, whose marks only a read can tell.
            cache_bytes=0,
        )
        return BatchEngine(
            SnapshotFold(self.topics, s.keys),
            store,
            log=log,
            dead_letter=sink,
            outputs=self._publish_change_points,
        )

    async def _close_resources(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self._close_redis()

    # ----------------------------------------------------------------- batch
    def _split(self, records: list[RecordLike]) -> tuple[list[RecordLike], list[RecordLike]]:
        """A batch's exposures (the judge's) and the rest (the fold's)."""
        exposures = self.topics.exposures
        judged = [r for r in records if r.topic == exposures]
        if not judged:
            return judged, records
        return judged, [r for r in records if r.topic != exposures]

    def _decode(self, records: list[RecordLike]) -> DecodedBatch:
        """The fold's part, decoded ahead; the judge decodes its (few) exposures itself."""
        assert self.engine is not None
        return self.engine.decode(self._split(records)[1])

    async def _handle(self, records: list[RecordLike], decoded: DecodedBatch) -> FoldReport:
        """Exposures through the judge's engine, the rest through the fold's; the loop
        commits the whole batch only after both returned (a failure in either rewinds
        it, and each engine's stored offsets make the part it wrote a no-op)."""
        self._judged = None  # a failed batch's report must not be accounted
        judged, folded = self._split(records)
        if judged:
            assert self._judge is not None
            self._judged = await self._judge.handle(judged)
        return await super()._handle(folded, decoded)

    def _account(self, report: FoldReport) -> None:
        super()._account(report)
        if self._judged is not None:
            self.exposure_stats.add(self._judged)
            self.metrics.outcomes(self._judged)
            self._judged = None

    async def poll_once(self, stop: asyncio.Event | None = None) -> int:
        """One batch, then (every ``mab_attribution_sweep_s``) close expired windows.

        A failed sweep (Kafka or Redis down) is logged and retried at the next one: the
        windows stay open in Redis, nothing is lost.
        """
        n = await super().poll_once(stop)
        if stop is not None and stop.is_set():
            # Stopping: a sweep now would only make SIGTERM wait on the same Redis that
            # may just have failed the batch (the windows stay open for the next run).
            return n
        now = time.monotonic()
        if self._sweeper is not None and self.engine is not None and now >= self._next_sweep:
            self._next_sweep = now + self.settings.mab_attribution_sweep_s
            try:
                swept = await self._sweeper.sweep(self.engine.watermark)
            except (ProduceError, KafkaException, RedisError, OSError) as exc:
                log.warning("attribution sweep failed, retrying", extra={"error": repr(exc)})
            else:
                self.defaults_logged += swept.defaults
        return n

    async def _publish_defaults(self, events: Sequence[RewardObserved]) -> None:
        """Append default rewards to the rewards topic (acked; idempotent producer)."""
        await self._send(self.topics.rewards, events)

    async def _send(self, topic: str, events: Sequence[AnyEvent]) -> None:
        assert self._producer is not None
        await self._producer.send(
            [OutRecord(topic, encode(ev), ev.experiment_id.encode()) for ev in events]
        )

    async def _publish_decisions(self, events: Sequence[DecisionMade]) -> None:
        """Produce the judged exposures' decisions, acknowledged, before their marks are
        written. A failure fails the batch (retried from the same records: nothing was
        marked, so the retry produces them again)."""
        await self._send(self.topics.decisions, events)

    async def _publish_change_points(
        self, events: Sequence[ChangePointDetected | GuardrailBreached | WinnerDeclared]
    ) -> None:
        """Publish the fold's derived events (change points, guardrail breaches and the
        stopping rule's ``WinnerDeclared``) to the experiments topic, keyed by experiment id.

        Called by the engine after the Redis writes and before the Kafka commit. The
        records are already folded, so a failure here must not fail the batch (its
        redelivery would be dropped by the offset check and the event lost): we retry
        until the broker takes them (at-least-once; the ids are deterministic, see
        :func:`~services.reward_consumer.processor.change_point_event`). Known gap: a
        crash between the Redis write and this publish loses the events; replay of the
        rewards recomputes them.
        """
        assert self._producer is not None
        while True:
            try:
                await self._send(self.topics.experiments, events)
                return
            except (ProduceError, KafkaException) as exc:
                log.warning("change point publish failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(self.settings.retry_backoff_s)

    # ----------------------------------------------------------------- stats
    def _stats_extra(self) -> dict[str, object]:
        s = self.stats
        return {
            **s.as_dict(),
            "batches": self.batches,
            "defaults_logged": self.defaults_logged,
            "exposures": self.exposure_stats.as_dict(),
            "records_per_s": round(s.records / self.fold_seconds) if self.fold_seconds else 0,
        }

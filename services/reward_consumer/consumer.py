"""The reward consumer: Kafka rewards + decisions -> exactly-once folded snapshots in Redis.

The Kafka side (why a plain librdkafka loop and not FastStream, the poll -> write -> commit
order and why it is that order, rewind-and-backoff on failure, rebalances, fetch sizing)
is shared with the projector and lives in :mod:`stream_runtime.kafka_loop`; read
:meth:`stream_runtime.kafka_loop.KafkaBatchProcessor._process` for the full argument.
In short: poll -> decode -> atomic read -> drop records at/below the stored applied
offset -> fold -> one compare-and-set Lua script per experiment writing snapshot +
offsets + dedupe keys together -> only then commit the Kafka offsets. A crash at any
point either loses nothing (no commit yet: Kafka redelivers) or doubles nothing (the
stored offsets make the redelivered records a no-op).

This module adds what only the reward consumer has: the fold handler
(:mod:`services.reward_consumer.handlers`) and one durable producer for
``ChangePointDetected`` events and for dead letters.

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
from schemas.events import AnyEvent, ChangePointDetected, RewardObserved
from services.reward_consumer.attribution import AttributionSweeper
from services.reward_consumer.batch import RecordLike
from services.reward_consumer.handlers import BatchHandler, BatchReport, DeadLetterSink
from services.reward_consumer.settings import ConsumerSettings
from services.reward_consumer.store import ConsumerStore
from stream_runtime.acked_producer import AckedProducer, OutRecord, ProduceError
from stream_runtime.dead_letter import DeadLetterProducer, dead_letter_producer
from stream_runtime.kafka_loop import KafkaBatchProcessor
from stream_runtime.redis_client import AnyRedis

log = logging.getLogger("services.reward_consumer")


class RewardConsumer(KafkaBatchProcessor[BatchReport]):
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
        self.stats = BatchReport()
        self._producer: AckedProducer | None = None
        self._redis: AnyRedis | None = None
        self._handler: BatchHandler | None = None
        self._sweeper: AttributionSweeper | None = None
        self._next_sweep = 0.0
        self.defaults_logged = 0

    @property
    def fold_seconds(self) -> float:
        """Wall time inside ``handle()``, for the records/s figure."""
        return self.handle_seconds

    @property
    def subscribed(self) -> list[str]:
        return [self.topics.rewards, self.topics.decisions]

    # ----------------------------------------------------------------- resources
    async def _open_resources(self) -> None:
        s = self.settings
        self._redis = s.redis_client()
        await self._redis.ping()  # fail fast at start-up, not inside the first batch
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
        self._handler = BatchHandler(
            ConsumerStore(self._redis, s.keys),
            self.topics,
            sink,
            self._publish_change_points,
        )
        self._sweeper = AttributionSweeper(
            self._redis, s.keys, self._publish_defaults, s.mab_attribution_idle_grace_s
        )

    async def _close_resources(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # ----------------------------------------------------------------- batch
    def _rebalanced(self) -> None:
        """Keep the handler's snapshot cache to the partitions we own (it is checked by
        every write anyway, see :mod:`services.reward_consumer.handlers`)."""
        if self._handler is not None:
            self._handler.forget()

    async def _handle(self, records: list[RecordLike]) -> BatchReport:
        assert self._handler is not None
        return await self._handler.handle(records)

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
        if self._sweeper is not None and self._handler is not None and now >= self._next_sweep:
            self._next_sweep = now + self.settings.mab_attribution_sweep_s
            try:
                swept = await self._sweeper.sweep(self._handler.watermark)
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
            "records_per_s": round(s.records / self.fold_seconds) if self.fold_seconds else 0,
        }

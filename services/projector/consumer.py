"""The projector: Kafka decisions + rewards + change points -> exactly-once time buckets.

Wiring only. The projection is a processor (:class:`services.projector.processor.
BucketProjection`), driven by the engine (:mod:`stream_runtime.engine`) in the Kafka loop
(:mod:`stream_runtime.kafka_loop`, whose :meth:`~stream_runtime.kafka_loop.
KafkaBatchProcessor._process` has the long argument) with its own consumer group and its
own offsets in Redis: poll -> decode -> read (or the engine's checked cache) -> drop
records at/below the applied offset -> project (pure) -> one compare-and-set Lua script
per experiment writing bucket increments + offsets + dedupe keys together -> only then
commit the Kafka offsets. A crash before the Redis write changes nothing (Kafka
redelivers); a crash between the write and the commit redelivers records whose offsets
are stored, so they are dropped.

Records it cannot project (undecodable, unknown experiment or arm, arm mismatch) are
*skipped*: counted by reason in its stats and logged once per batch, never
dead-lettered. The reward consumer reads the same rewards and decisions with the same
rules and owns the DLQ for them, so each bad record is parked exactly once.
"""

from __future__ import annotations

import logging

from services.projector.processor import BucketProjection, ProjectionReport
from services.projector.settings import ProjectorSettings
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_loop import KafkaBatchProcessor
from stream_runtime.redis_store import RedisStateStore

log = logging.getLogger("services.projector")

#: The projector's line for the records it skips (once per batch that skips any).
SKIPPED: str = "records skipped (dead-lettered by the reward consumer)"


class Projector(KafkaBatchProcessor[ProjectionReport]):
    """Embeddable projector: ``await start()`` / ``await stop()``, or ``await run(event)``."""

    name = "projector"

    def __init__(self, settings: ProjectorSettings) -> None:
        super().__init__(settings, log)
        self.settings = settings
        self.topics = settings.topics
        self.stats = ProjectionReport()

    @property
    def subscribed(self) -> list[str]:
        return [self.topics.rewards, self.topics.decisions, self.topics.experiments]

    async def _open_resources(self) -> BatchEngine[ProjectionReport]:
        s = self.settings
        redis = await self._open_redis(s)
        return BatchEngine(
            BucketProjection(self.topics, s.keys, s.retention),
            RedisStateStore(redis),
            log=log,
            skipped_message=SKIPPED,
        )

    async def _close_resources(self) -> None:
        await self._close_redis()

    def _stats_extra(self) -> dict[str, object]:
        s = self.stats
        return {
            **s.as_dict(),
            "batches": self.batches,
            "records_per_s_in_handler": round(s.records / self.handle_seconds)
            if self.handle_seconds
            else None,
        }

"""The decider's Kafka producer: two delivery modes for two kinds of events.

* Commands (experiment events) and rewards are the system of record: :meth:`publish`
  waits for the broker's ack (``acks=all``, idempotent producer) with a bounded timeout,
  and the HTTP answer reflects it, so a 2xx means "in the log".
* Decisions are on the hot path: :meth:`publish_nowait` only enqueues the record into
  the producer's batch (sent after ``linger_ms``) and counts delivery failures from a
  done-callback. Shutdown flushes, so no enqueued decision event is lost on a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.codec import encode
from schemas.events import AnyEvent
from schemas.topics import TopicNames, partition_key

log = logging.getLogger(__name__)


class EventLogUnavailableError(RuntimeError):
    """The broker did not acknowledge an event in time (or refused it)."""


@dataclass(slots=True)
class DeliveryStats:
    """Counters of fire-and-forget decision events (logged; see app.state)."""

    enqueued: int = 0
    delivered: int = 0
    failed: int = 0
    last_error: str = ""
    last_error_log: float = field(default=0.0)


class EventProducer:
    """Thin owner of one :class:`AIOKafkaProducer` and the product's topic names."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: TopicNames,
        *,
        send_timeout_s: float,
        enqueue_timeout_s: float,
        linger_ms: int,
        max_batch_bytes: int = 512 * 1024,
        client_id: str = "mab-decider",
    ) -> None:
        self.topics = topics
        self.send_timeout_s = send_timeout_s
        self.enqueue_timeout_s = enqueue_timeout_s
        self.stats = DeliveryStats()
        self.kafka = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_batch_size=max_batch_bytes,
            compression_type=None,
            request_timeout_ms=max(1000, int(send_timeout_s * 1000)),
            retry_backoff_ms=100,
        )

    async def start(self, timeout_s: float) -> None:
        """Connect, retrying until ``timeout_s`` (the broker may start after us)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.kafka.start()
                return
            except KafkaError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("kafka not reachable yet (%s); retrying", exc)
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Flush every enqueued record (decisions included), then close."""
        try:
            await asyncio.wait_for(self.kafka.flush(), timeout=self.send_timeout_s * 2)
        except (TimeoutError, KafkaError) as exc:
            log.error(
                "flush on shutdown failed: %s (%d decision events unsent)",
                exc,
                self.stats.enqueued - self.stats.delivered - self.stats.failed,
            )
        await self.kafka.stop()

    async def publish(self, topic: str, event: AnyEvent) -> None:
        """Send and wait for the broker ack, or raise :class:`EventLogUnavailableError`."""
        value = encode(event)
        try:
            async with asyncio.timeout(self.send_timeout_s):
                fut = await self.kafka.send(topic, value, key=partition_key(event.experiment_id))
                # shield: a timeout must not cancel the batch future inside aiokafka.
                await asyncio.shield(fut)
        except TimeoutError:
            raise EventLogUnavailableError(
                f"no ack from Kafka within {self.send_timeout_s}s"
            ) from None
        except KafkaError as exc:
            raise EventLogUnavailableError(f"kafka error: {exc!r}") from exc

    async def publish_nowait(self, topic: str, event: AnyEvent) -> bool:
        """Enqueue an event without waiting for the ack (see :meth:`send_nowait`)."""
        return await self.send_nowait(topic, partition_key(event.experiment_id), encode(event))

    async def send_nowait(self, topic: str, key: bytes, value: bytes) -> bool:
        """Enqueue an encoded record without waiting for the ack; ``False`` if that failed.

        Enqueueing is bounded by ``enqueue_timeout_s``: a full buffer or unknown topic
        metadata must not stall decisions (serving beats logging; the loss is counted).
        """
        stats = self.stats
        try:
            async with asyncio.timeout(self.enqueue_timeout_s):
                fut = await self.kafka.send(topic, value, key=key)
        except (TimeoutError, KafkaError) as exc:
            self._failed(repr(exc) or "enqueue timeout")
            return False
        stats.enqueued += 1
        fut.add_done_callback(self._on_delivery)
        return True

    def _on_delivery(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._failed("cancelled")
            return
        exc = fut.exception()
        if exc is not None:
            self._failed(repr(exc))
        else:
            self.stats.delivered += 1

    def _failed(self, error: str) -> None:
        stats = self.stats
        stats.failed += 1
        stats.last_error = error
        now = time.monotonic()
        if now - stats.last_error_log > 5.0:  # at most one log line per 5 s
            stats.last_error_log = now
            log.error("decision event not delivered (%d so far): %s", stats.failed, error)

    async def check(self, timeout_s: float) -> str:
        """Readiness: a metadata round trip that also lists our topics."""
        try:
            async with asyncio.timeout(timeout_s):
                cluster = await self.kafka.client.fetch_all_metadata()
        except TimeoutError:
            return f"no metadata within {timeout_s}s"
        except KafkaError as exc:
            return f"error: {exc!r}"
        present = cluster.topics()
        wanted = (self.topics.experiments, self.topics.decisions, self.topics.rewards)
        missing = [t for t in wanted if t not in present]
        return f"missing topics: {missing}" if missing else "ok"

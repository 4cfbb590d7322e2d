"""The decider's Kafka producer: two delivery modes for two kinds of events.

* Commands (experiment events) and rewards are the system of record: :meth:`publish`
  waits for the broker's ack (``acks=all``, idempotent producer) with a bounded timeout,
  and the HTTP answer reflects it, so a 2xx means "in the log".
* Decisions are on the hot path: :meth:`send_nowait` only enqueues the record into the
  producer's queue (sent after ``linger_ms``) and counts delivery failures. Shutdown
  flushes, so no enqueued decision event is lost on a clean stop.

Why librdkafka (``confluent-kafka``) and not aiokafka here: enqueueing one record with
aiokafka's ``send()`` costs ~22 µs of Python (a coroutine, a metadata wait, the
partitioner and the batch builder), i.e. a fifth of the whole budget of a 10,000 req/s
decision service; ``Producer.produce()`` hands the bytes to C in ~2 µs and librdkafka
batches, retries and keeps idempotence on its own threads. Delivery reports are served
by one poll thread and handed back to the event loop with ``call_soon_threadsafe``.

Two producer instances, because delivery reports are configured per producer: the one
for decisions reports only errors (a report per decision would cost the poll thread a
Python call per event), the one for commands and rewards reports every delivery (each
``publish`` awaits its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.codec import encode
from schemas.events import AnyEvent
from schemas.topics import TopicNames, partition_key

log = logging.getLogger(__name__)

#: Seconds the poll thread blocks in librdkafka per call (it returns early on reports).
_POLL_S = 0.05
#: How long an acked send waits beyond ``message.timeout.ms`` for librdkafka's own verdict.
#: librdkafka scans its queues for timed-out messages about once a second, so a message
#: can still be delivered up to ~1 s after its timeout. Answering 503 on our own clock at
#: exactly the timeout let such a reward be refused *and* logged (the Kafka restart fault
#: test saw 2 of 12 refusals land); waiting for the delivery report makes the answer
#: follow what librdkafka did, and the timer below stays only as a safety net.
_REPORT_GRACE_S = 1.5


class EventLogUnavailableError(RuntimeError):
    """The broker did not acknowledge an event in time (or refused it)."""


@dataclass(slots=True)
class DeliveryStats:
    """Counters of fire-and-forget decision events (logged at shutdown).

    ``enqueued`` is written by the event loop, ``failed`` by the poll thread: one writer
    per field, so no lock. ``delivered`` is derived (see :meth:`EventProducer.stats`).
    """

    enqueued: int = 0
    delivered: int = 0
    failed: int = 0
    last_error: str = ""
    last_error_log: float = field(default=0.0)


def _config(
    bootstrap_servers: str, client_id: str, linger_ms: int, max_batch_bytes: int
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "batch.size": max_batch_bytes,
        "compression.type": "none",
        # Keyed by experiment id with the Java client's murmur2 partitioner, so a record
        # lands on the same partition whichever client (aiokafka, Java, us) produced it.
        "partitioner": "murmur2_random",
        "retry.backoff.ms": 100,
        "socket.keepalive.enable": True,
    }


class EventProducer:
    """Owner of the two librdkafka producers, their poll thread and the topic names."""

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
        decision_delivery_timeout_s: float = 120.0,
    ) -> None:
        self.topics = topics
        self.send_timeout_s = send_timeout_s
        self.enqueue_timeout_s = enqueue_timeout_s
        self._stats = DeliveryStats()
        base = _config(bootstrap_servers, client_id, linger_ms, max_batch_bytes)
        # Acked path: librdkafka gives up on a record at about the time the HTTP answer
        # says 503, which keeps "refused but landed later" to a narrow race (see the
        # Known gaps in docs/architecture.md).
        self._acked = Producer(
            {
                **base,
                "client.id": f"{client_id}-acked",
                "message.timeout.ms": max(1000, int(send_timeout_s * 1000)),
                "linger.ms": min(linger_ms, 1),
            }
        )
        self._decisions = Producer(
            {
                **base,
                "client.id": f"{client_id}-decisions",
                "message.timeout.ms": int(decision_delivery_timeout_s * 1000),
                "delivery.report.only.error": True,
                "on_delivery": self._on_decision_error,
            }
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self, timeout_s: float) -> None:
        """Wait until the broker answers (it may start after us), then start polling."""
        self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.check(min(2.0, max(0.1, deadline - time.monotonic())))
            if not state.startswith(("error", "no metadata")):
                break
            if time.monotonic() >= deadline:
                raise EventLogUnavailableError(f"kafka not reachable: {state}")
            log.warning("kafka not reachable yet (%s); retrying", state)
            await asyncio.sleep(0.5)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        """Serve delivery reports of both producers until :meth:`stop`."""
        acked, decisions = self._acked, self._decisions
        while not self._stop.is_set():
            acked.poll(_POLL_S)
            decisions.poll(0)

    async def stop(self) -> None:
        """Flush every enqueued record (decisions included), then stop polling."""
        timeout = self.send_timeout_s * 2
        left = await asyncio.to_thread(self._flush_both, timeout)
        if left:
            log.error("flush on shutdown failed: %d events unsent after %.1fs", left, timeout)
            self._stats.failed += left
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None

    def _flush_both(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        left = self._decisions.flush(timeout_s)
        return left + self._acked.flush(max(0.0, deadline - time.monotonic()))

    @property
    def stats(self) -> DeliveryStats:
        """Decision delivery counters; ``delivered`` = enqueued - failed - still queued."""
        s = self._stats
        s.delivered = max(0, s.enqueued - s.failed - len(self._decisions))
        return s

    # ---------------------------------------------------------------- acked path
    async def publish(self, topic: str, event: AnyEvent) -> None:
        """Send and wait for the broker ack, or raise :class:`EventLogUnavailableError`."""
        await self.publish_many(topic, [(partition_key(event.experiment_id), encode(event))])

    async def publish_many(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        """Send ``(key, value)`` records and wait until the broker acked every one."""
        loop = self._loop or asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        try:
            for key, value in records:
                fut: asyncio.Future[None] = loop.create_future()
                futures.append(fut)
                self._produce_acked(topic, key, value, fut, loop)
            async with asyncio.timeout(self.send_timeout_s + _REPORT_GRACE_S):
                await asyncio.gather(*futures)
        except TimeoutError:
            raise EventLogUnavailableError(
                f"no ack from Kafka within {self.send_timeout_s + _REPORT_GRACE_S}s"
            ) from None
        except (KafkaException, BufferError) as exc:
            raise EventLogUnavailableError(f"kafka error: {exc!r}") from exc
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def _produce_acked(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        fut: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(_settle, fut, err)

        self._acked.produce(topic, value, key, on_delivery=on_delivery)

    # ---------------------------------------------------------------- decisions
    async def send_nowait(self, topic: str, key: bytes, value: bytes) -> bool:
        """Enqueue an encoded record without waiting for the ack; ``False`` if that failed.

        A full queue is backpressure, not loss: we retry for up to ``enqueue_timeout_s``
        (the poll thread drains it) before counting the event as failed, so a broker
        hiccup slows decisions down instead of silently dropping their log.
        """
        produce = self._decisions.produce
        try:
            produce(topic, value, key)
        except BufferError:
            if not await self._enqueue_slowly(topic, key, value):
                return False
        except KafkaException as exc:
            self._failed(repr(exc))
            return False
        self._stats.enqueued += 1
        return True

    async def _enqueue_slowly(self, topic: str, key: bytes, value: bytes) -> bool:
        deadline = time.monotonic() + self.enqueue_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            with contextlib.suppress(BufferError):
                self._decisions.produce(topic, value, key)
                return True
        self._failed("enqueue timeout: producer queue full")
        return False

    def _on_decision_error(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed(str(err))

    def _failed(self, error: str) -> None:
        stats = self._stats
        stats.failed += 1
        stats.last_error = error
        now = time.monotonic()
        if now - stats.last_error_log > 5.0:  # at most one log line per 5 s
            stats.last_error_log = now
            log.error("decision event not delivered (%d so far): %s", stats.failed, error)

    # ---------------------------------------------------------------- readiness
    async def check(self, timeout_s: float) -> str:
        """Readiness: a metadata round trip that also lists our topics."""
        try:
            meta = await asyncio.to_thread(self._acked.list_topics, None, timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            if isinstance(err, KafkaError) and err.code() == KafkaError._TRANSPORT:
                return f"no metadata within {timeout_s}s"
            return f"error: {err!r}"
        present = meta.topics
        wanted = (self.topics.experiments, self.topics.decisions, self.topics.rewards)
        missing = [t for t in wanted if t not in present]
        return f"missing topics: {missing}" if missing else "ok"


def _settle(fut: asyncio.Future[None], err: KafkaError | None) -> None:
    """Resolve an acked send's future on the event loop (ignoring a timed-out caller)."""
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(KafkaException(err))

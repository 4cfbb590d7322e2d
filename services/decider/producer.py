"""The decider's Kafka producer: two delivery modes for two kinds of events.

* Commands (experiment events) and rewards are the system of record: :meth:`publish`
  waits for the broker's ack (``acks=all``, idempotent producer) with a bounded timeout,
  and the HTTP answer reflects it, so a 2xx means "in the log". Concurrent publishes are
  *group-committed*: every record handed in during one event-loop iteration is produced
  together (one produce request instead of one per HTTP request), and their delivery
  reports are polled by the event loop itself while any are outstanding (no thread
  hand-off per ack); each record still resolves its own caller, so a record the broker
  refused fails exactly the request that sent it.
* Decisions are on the hot path: :meth:`try_send` only enqueues the record into the
  producer's queue (sent after ``decision_linger_ms``) and counts delivery failures.
  Shutdown flushes, so no enqueued decision event is lost on a clean stop.

Why decisions linger 50 ms by default: at ``linger.ms=5`` librdkafka's broker thread and
the Kafka broker together spent more CPU per decision on small produce requests than the
decision itself in Python, on the same two cores; at 50 ms both fall several times over
(figures: docs/benchmarks.md, "Costs behind design choices"). The price is up to 50 ms
more before a decision is readable in the log, which nothing on the decision path waits
for.

Why librdkafka (``confluent-kafka``) and not aiokafka here: enqueueing one record with
aiokafka's ``send()`` costs ~22 µs of Python (a coroutine, a metadata wait, the
partitioner and the batch builder), i.e. a fifth of the whole budget of a 10,000 req/s
decision service; ``Producer.produce()`` hands the bytes to C in ~2 µs and librdkafka
batches, retries and keeps idempotence on its own threads. Acked delivery reports are
served on the event loop (:meth:`EventProducer._poll_acks`), the decisions' error
reports by one poll thread.

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
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.codec import encode
from schemas.events import AnyEvent
from schemas.topics import TopicNames, partition_key
from stream_runtime.kafka_connection import KafkaTarget, new_client, wait_until_reachable

log = logging.getLogger(__name__)

#: Seconds the poll thread blocks in librdkafka per call (it returns early on reports).
_POLL_S = 0.05
#: While acked records are outstanding, the event loop polls their delivery reports this
#: often (uvloop timers have millisecond resolution).
_ACK_POLL_S = 0.001
#: How long an acked send waits beyond ``message.timeout.ms`` for librdkafka's own verdict.
#: librdkafka scans its queues for timed-out messages about once a second, so a message
#: can still be delivered up to ~1 s after its timeout. Answering 503 on our own clock at
#: exactly the timeout let such a reward be refused *and* logged (the Kafka restart fault
#: test saw 2 of 12 refusals land); waiting for the delivery report makes the answer
#: follow what librdkafka did, and the timer below stays only as a safety net.
_REPORT_GRACE_S = 1.5


class EventLogUnavailableError(RuntimeError):
    """The broker did not acknowledge an event in time (or refused it)."""


#: One acked record waiting for its group: ``(topic, key, value, future of its caller)``.
_Pending = tuple[str, bytes, bytes, "asyncio.Future[None]"]


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


def _config(client_id: str, linger_ms: int, max_batch_bytes: int) -> dict[str, Any]:
    """On top of the connection's (servers, TLS, SASL: ``KafkaConnection``)."""
    return {
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
        kafka: KafkaTarget,
        topics: TopicNames,
        *,
        send_timeout_s: float,
        enqueue_timeout_s: float,
        linger_ms: int,
        max_batch_bytes: int = 512 * 1024,
        client_id: str = "mab-decider",
        decision_delivery_timeout_s: float = 120.0,
        decision_linger_ms: int = 50,
    ) -> None:
        self.topics = topics
        self.send_timeout_s = send_timeout_s
        self.enqueue_timeout_s = enqueue_timeout_s
        self._stats = DeliveryStats()
        base = _config(client_id, linger_ms, max_batch_bytes)
        # Acked path: librdkafka gives up on a record at about the time the HTTP answer
        # says 503, which keeps "refused but landed later" to a narrow race (see the
        # Known gaps in docs/architecture.md).
        self._acked, self._errors = new_client(
            Producer,
            kafka,
            {
                **base,
                "client.id": f"{client_id}-acked",
                "message.timeout.ms": max(1000, int(send_timeout_s * 1000)),
                # A group is already the batch: send it as soon as it is produced.
                "linger.ms": min(linger_ms, 1),
            },
        )
        self._decisions, _ = new_client(
            Producer,
            kafka,
            {
                **base,
                "client.id": f"{client_id}-decisions",
                "message.timeout.ms": int(decision_delivery_timeout_s * 1000),
                "linger.ms": decision_linger_ms,
                "delivery.report.only.error": True,
                "on_delivery": self._on_decision_error,
            },
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Acked records handed in since the last group was produced (event loop only).
        self._group: list[_Pending] = []
        self._group_scheduled = False
        #: Groups produced so far (what tests and the docs count).
        self.groups = 0
        #: Delivery reports of acked records, appended by whichever thread serves
        #: librdkafka's callbacks (the event loop, or a flush at shutdown).
        self._reports: deque[tuple[asyncio.Future[None], KafkaError | None]] = deque()
        #: Acked records produced whose report has not been settled yet (event loop only).
        self._outstanding = 0
        self._ack_poll: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self, timeout_s: float) -> None:
        """Wait until the broker answers (it may start after us), then start polling.

        Raises :class:`~stream_runtime.kafka_connection.KafkaConnectionError` naming the
        setting at once when the broker refuses our credentials or certificate, and when
        no broker answered within ``timeout_s``.
        """
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(wait_until_reachable, self._acked, self._errors, timeout_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        """Serve the decision producer's (error-only) delivery reports until :meth:`stop`.

        The acked producer is polled by the event loop instead (:meth:`_poll_acks`).
        """
        decisions = self._decisions
        while not self._stop.is_set():
            decisions.poll(_POLL_S)

    def _poll_acks(self) -> None:
        """Serve acked delivery reports on the event loop while any are outstanding.

        Why not the poll thread: confluent-kafka takes the GIL once per delivery
        callback, so a poll thread serving 3,000 acks/s fought the event loop and
        granian's runtime thread for the GIL thousands of times per second (measured:
        POST /reward p99 in the 100 ms range under wrk while the handler itself took
        under 20 ms). ``poll(0)`` here never blocks and runs the callbacks in this thread.
        """
        self._ack_poll = None
        self._acked.poll(0)
        self._settle_reports()
        if self._outstanding > 0 and self._loop is not None:
            self._ack_poll = self._loop.call_later(_ACK_POLL_S, self._poll_acks)

    def _settle_reports(self) -> None:
        """Resolve the callers of every report collected so far (on the event loop)."""
        reports = self._reports
        settled = 0
        with contextlib.suppress(IndexError):
            while True:
                fut, err = reports.popleft()
                settled += 1
                if fut.done():  # its caller gave up (timeout, disconnect)
                    continue
                if err is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(KafkaException(err))
        self._outstanding = max(0, self._outstanding - settled)

    async def stop(self) -> None:
        """Flush every enqueued record (decisions included), then stop polling."""
        timeout = self.send_timeout_s * 2
        left = await asyncio.to_thread(self._flush_both, timeout)
        self._settle_reports()
        if self._ack_poll is not None:
            self._ack_poll.cancel()
            self._ack_poll = None
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
        """Send ``(key, value)`` records and wait until the broker acked every one.

        The records join the current group (:meth:`_produce_group` runs once per loop
        iteration); a record is only ever answered by its own delivery report, so this
        raises for exactly the callers whose records Kafka did not acknowledge.
        """
        loop = self._loop or asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for key, value in records:
            fut: asyncio.Future[None] = loop.create_future()
            futures.append(fut)
            self._group.append((topic, key, value, fut))
        if not self._group_scheduled:
            self._group_scheduled = True
            loop.call_soon(self._produce_group)
        try:
            async with asyncio.timeout(self.send_timeout_s + _REPORT_GRACE_S):
                if len(futures) == 1:
                    await futures[0]  # POST /reward: no gather() per request
                else:
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

    def _produce_group(self) -> None:
        """Hand every pending acked record to librdkafka in one go (the group commit).

        librdkafka sends what is queued for a partition in one request, so a group of
        N concurrent rewards costs the broker one produce request, not N. A record that
        cannot even be enqueued fails its own caller only.
        """
        self._group_scheduled = False
        group, self._group = self._group, []
        produce = self._acked.produce
        report = self._report
        produced = 0
        for topic, key, value, fut in group:
            if fut.done():  # its caller gave up (timeout, disconnect) before we got here
                continue
            try:
                produce(topic, value, key, on_delivery=partial(report, fut))
            except (KafkaException, BufferError) as exc:
                fut.set_exception(exc)
            else:
                produced += 1
        self.groups += 1
        self._outstanding += produced
        if self._outstanding and self._ack_poll is None:
            self._loop = self._loop or asyncio.get_running_loop()
            self._ack_poll = self._loop.call_later(_ACK_POLL_S, self._poll_acks)

    def _report(self, fut: asyncio.Future[None], err: KafkaError | None, _msg: Message) -> None:
        self._reports.append((fut, err))

    # ---------------------------------------------------------------- decisions
    def try_send(self, topic: str, key: bytes, value: bytes) -> bool:
        """Enqueue without waiting; ``False`` only when the queue is full (then
        :meth:`send_when_room` waits for room). The hot path's common case: no coroutine."""
        try:
            self._decisions.produce(topic, value, key)
        except BufferError:
            return False
        except KafkaException as exc:
            self._failed(repr(exc))
            return True  # counted as failed, nothing to wait for
        self._stats.enqueued += 1
        return True

    async def send_when_room(self, topic: str, key: bytes, value: bytes) -> bool:
        """After :meth:`try_send` found the queue full: wait for room and enqueue;
        ``False`` if there was none within ``enqueue_timeout_s`` (counted as failed).

        A full queue is backpressure, not loss: the poll thread drains it while we
        retry, so a broker hiccup slows decisions down instead of silently dropping
        their log.
        """
        if not await self._enqueue_slowly(topic, key, value):
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

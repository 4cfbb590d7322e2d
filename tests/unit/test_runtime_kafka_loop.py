"""The Kafka loop's poll ahead (stream_runtime/kafka_loop.py) on a scripted consumer.

While a batch is written, the loop polls and decodes the next one. These tests drive
:class:`~stream_runtime.kafka_loop.KafkaBatchProcessor` with a fake consumer (a log per
partition, a position per partition, seeks and commits recorded) and the reward
consumer's engine on the memory store, and check the rules that keep that exactly-once:
a failed batch throws away the batch polled ahead and rewinds both; partitions that
moved during the poll ahead leave the batch in flight uncommitted; close never commits
the batch polled ahead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
import pytest
from confluent_kafka import TopicPartition

from services.reward_consumer import FoldReport
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_connection import KafkaConnection
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.kafka_loop import KafkaBatchProcessor
from stream_runtime.processor import Loaded
from stream_runtime.state_store import LoadRequest, StateStore, Write
from tests.fixtures.engines import Stores, fold_engine
from tests.integration.test_runtime_engine_cache import TS_MS, pulls, setup

pytestmark = pytest.mark.unit

log = logging.getLogger("tests.kafka_loop")

#: Records per poll: small, so a handful of records make several batches.
BATCH = 3


class FakeMessage:
    """What :func:`~stream_runtime.kafka_consumer.to_records` reads of a librdkafka message."""

    def __init__(self, record: KafkaRecord) -> None:
        self.record = record

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self.record.topic

    def partition(self) -> int:
        return self.record.partition

    def offset(self) -> int:
        return self.record.offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self.record.timestamp)

    def value(self) -> bytes | None:
        return self.record.value

    def key(self) -> bytes | None:
        return None

    def headers(self) -> None:
        return None


class FakeConsumer:
    """A consumer of fixed partition logs: a poll takes up to ``n`` records of the first
    partition with records left (one partition per poll, in partition order)."""

    def __init__(self, logs: Mapping[tuple[str, int], Sequence[KafkaRecord]]) -> None:
        self.logs = dict(logs)
        self.at = dict.fromkeys(self.logs, 0)
        self.polls = 0
        self.commits: list[dict[tuple[str, int], int]] = []
        self.moved: list[object] = []  # rebalance callbacks to fire in the next poll

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        self.polls += 1
        for callback in self.moved:
            callback()  # type: ignore[operator]
        self.moved.clear()
        for tp, records in self.logs.items():
            at = self.at[tp]
            if at < len(records):
                self.at[tp] = min(len(records), at + n)
                return [FakeMessage(r) for r in records[at : at + n]]
        return []

    def poll(self, timeout: float) -> FakeMessage | None:
        return None

    def seek(self, tp: TopicPartition) -> None:
        self.at[(tp.topic, tp.partition)] = tp.offset

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.at[(tp.topic, tp.partition)]) for tp in tps
        ]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return 0, len(self.logs[(tp.topic, tp.partition)])

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.logs]

    def close(self) -> None:
        pass


class SlowStore:
    """A store whose writes wait until the loop has polled ahead (so the batch ahead is
    in hand while the write is in flight), failing the first ``fail`` of them; records
    the offsets of every write that landed, in order."""

    def __init__(self, store: StateStore, consumer: FakeConsumer, fail: int = 0) -> None:
        self.store = store
        self.consumer = consumer
        self.fail = fail
        self.landed: list[dict[str, int]] = []

    async def load(self, requests: Mapping[str, LoadRequest]) -> dict[str, Loaded]:
        return await self.store.load(requests)

    async def write(self, writes: Sequence[Write], now: float) -> list[str]:
        polls = self.consumer.polls
        for _ in range(200):
            if self.consumer.polls > polls:
                break
            await asyncio.sleep(0.005)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("Redis went away")
        refused = await self.store.write(writes, now)
        self.landed.extend(dict(w.new) for w in writes if w.experiment_id not in refused)
        return refused


@dataclass(frozen=True)
class Loop:
    """The loop settings the processor reads (no broker behind them)."""

    group_id: str = "test"
    max_batch_records: int = BATCH
    poll_timeout_ms: int = 0
    session_timeout_ms: int = 10_000
    retry_backoff_s: float = 0.0

    def connection(self) -> KafkaConnection:
        raise AssertionError("no broker in these tests")


class Processor(KafkaBatchProcessor[FoldReport]):
    """The reward consumer's fold in the Kafka loop, on the given consumer and engine."""

    name = "test processor"

    def __init__(self, consumer: FakeConsumer, engine: BatchEngine[FoldReport]) -> None:
        super().__init__(Loop(), log)
        self.stats = FoldReport()
        self._consumer = consumer  # type: ignore[assignment]  # duck-typed consumer
        self.engine = engine

    @property
    def subscribed(self) -> list[str]:
        return []

    async def _open_resources(self) -> BatchEngine[FoldReport]:
        raise AssertionError("opened by the test")

    async def _close_resources(self) -> None:
        pass

    def _stats_extra(self) -> dict[str, object]:
        return {}


def rewards(topic: str, partition: int, exp: str, n: int) -> list[KafkaRecord]:
    body = orjson.dumps({"experiment_id": exp, "arm_id": "a", "reward": 1})
    return [KafkaRecord(topic, partition, o, TS_MS + o, body) for o in range(n)]


async def drain(processor: Processor) -> None:
    """Poll until every log is read and nothing is held ahead."""
    for _ in range(20):
        if await processor.poll_once() == 0 and processor._ahead is None:
            return
    raise AssertionError("the loop did not drain the logs")


@pytest.mark.parametrize(
    ("sizes", "landed"),
    [
        # One partition: the batch ahead (offsets 3-5) follows the failed one (0-2).
        ({0: 6}, [(0, 2), (0, 5)]),
        # The batch ahead is all of partition 1, which the failed batch did not touch.
        ({0: 3, 1: 3}, [(0, 2), (1, 2)]),
    ],
)
async def test_a_failed_write_throws_away_the_batch_polled_ahead(
    stores: Stores, ns: str, sizes: dict[int, int], landed: list[tuple[int, int]]
) -> None:
    """Scenario: the first batch's write fails after the next batch was polled and
    decoded ahead; the loop then runs until the logs are drained.
    We expect: the batch ahead is not applied before the failed one is retried (no write
    stores offsets past the failed records, which the retry would drop as applied): the
    writes land in log order (``landed``: partition and last offset of each), every
    record is folded once, and each commit follows the write of its records."""
    exp = "shop-ahead"
    names, keys = await setup(stores, ns, exp)
    topic = names.rewards
    consumer = FakeConsumer({(topic, p): rewards(topic, p, exp, n) for p, n in sizes.items()})
    store = SlowStore(stores.store(), consumer, fail=1)
    processor = Processor(consumer, fold_engine(store, ns))

    assert await processor.poll_once() == BATCH
    assert processor.metrics.failed_batches._value.get() == 1
    assert processor._ahead is None  # thrown away, and both batches rewound
    assert consumer.at == dict.fromkeys(consumer.logs, 0)
    assert consumer.commits == []
    await drain(processor)

    assert store.landed == [{f"{topic}:{p}": o} for p, o in landed]
    assert consumer.commits == [{(topic, p): o + 1} for p, o in landed]
    assert await pulls(stores, keys, exp) == {"a": sum(sizes.values())}


async def test_partitions_moving_during_the_poll_ahead(stores: Stores, ns: str) -> None:
    """Scenario: a rebalance callback fires inside the poll ahead, while the first batch
    is in the engine.
    We expect: the engine's cache is kept until that batch is done and dropped right
    after; the batch is written but not committed (its partitions may be another
    member's now); the batch polled ahead is processed and committed as usual."""
    exp = "shop-moved"
    names, _keys = await setup(stores, ns, exp)
    topic = names.rewards
    consumer = FakeConsumer({(topic, 0): rewards(topic, 0, exp, 6)})
    engine = fold_engine(SlowStore(stores.store(), consumer), ns)
    processor = Processor(consumer, engine)
    assert await processor.poll_once() == BATCH  # the first poll of its own
    assert engine._cache
    assert consumer.commits == [{(topic, 0): 3}]

    in_flight: list[bool] = []
    consumer.moved.append(lambda: in_flight.append(bool(engine._cache)))
    consumer.moved.append(processor._rebalanced)
    assert await processor.poll_once() == BATCH
    assert in_flight == [True]  # the callback ran while the cache was in use
    assert engine._cache == {}  # settled once the batch was done
    assert consumer.commits == [{(topic, 0): 3}]  # the batch in flight: written, uncommitted
    assert processor._processed == {}

    assert processor._ahead is None  # the poll ahead found nothing left
    assert await processor.poll_once() == 0
    assert processor.batches == 2


async def test_close_commits_written_batches_only(stores: Stores, ns: str) -> None:
    """Scenario: the loop stops (SIGTERM) after a batch whose poll ahead took the next one.
    We expect: close commits the written batch's offsets and drops the batch ahead, so a
    restart reads it again instead of applying it ahead of its predecessors' redelivery."""
    exp = "shop-stop"
    names, keys = await setup(stores, ns, exp)
    topic = names.rewards
    consumer = FakeConsumer({(topic, 0): rewards(topic, 0, exp, 6)})
    processor = Processor(consumer, fold_engine(SlowStore(stores.store(), consumer), ns))
    assert await processor.poll_once() == BATCH
    assert processor._ahead is not None
    assert len(processor._ahead.records) == BATCH
    await processor._close()
    assert processor._ahead is None
    assert consumer.commits[-1] == {(topic, 0): BATCH}
    assert await pulls(stores, keys, exp) == {"a": BATCH}

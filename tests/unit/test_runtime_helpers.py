"""Shared stream-processor helpers: GC deferral, the engine's CAS retry loop, settings env
names."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from confluent_kafka import TopicPartition
from redis.asyncio import Redis

from schemas.events import RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.rejections import Rejection
from schemas.topics import TopicNames
from services.projector.settings import ProjectorSettings
from services.reward_consumer import ConsumerSettings, FoldReport, RewardConsumer, SnapshotFold
from stream_runtime.batch import (
    MAX_CAS_ATTEMPTS,
    CasConflictError,
    DecodedBatch,
    Group,
    gc_deferred,
    offset_field,
)
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_consumer import KafkaRecord, RebalanceLogger
from stream_runtime.process import JsonFormatter
from stream_runtime.redis_store import RedisStateStore
from stream_runtime.state_store import MemoryStateStore, Write
from tests.fixtures.events import config_of

pytestmark = pytest.mark.unit

log = logging.getLogger("test")

ROOT = Path(__file__).resolve().parents[2]


def test_gc_deferred_restores_the_collector_even_on_error() -> None:
    inside: list[bool] = []

    def fail() -> None:
        with gc_deferred():
            inside.append(gc.isenabled())
            raise RuntimeError("boom")

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        fail()
    assert inside == [False]
    assert gc.isenabled()


def test_gc_deferred_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with gc_deferred():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


class RefusingStore(MemoryStateStore):
    """A memory store that refuses the writes of the experiments in ``refuse`` (another
    consumer keeps writing them), a given number of times each."""

    def __init__(self, refuse: dict[str, int]) -> None:
        super().__init__()
        self.refuse = refuse
        self.rounds: list[list[str]] = []

    async def write(self, writes: Sequence[Write], now: float) -> list[str]:
        self.rounds.append(sorted(w.experiment_id for w in writes))
        refused = [w for w in writes if self.refuse.get(w.experiment_id, 0) > 0]
        for w in refused:
            self.refuse[w.experiment_id] -= 1
        landed = await super().write([w for w in writes if w not in refused], now)
        return landed + [w.experiment_id for w in refused]


def _engine(store: MemoryStateStore) -> tuple[BatchEngine[FoldReport], DecodedBatch]:
    topics = TopicNames.with_prefix("t.")
    keys = RedisKeys("t.")
    decoded = DecodedBatch()
    for exp in ("a", "b"):
        config = config_of(exp, ("x",), ts=0)
        store.strings[keys.experiment(exp).config] = config.model_dump_json().encode()
        group = decoded.groups[exp] = Group()
        record = KafkaRecord(topics.rewards, 0, 0 if exp == "a" else 1, 0, b"")
        event = RewardObserved(experiment_id=exp, arm_id="x", reward=1.0)
        group.add(record, event, offset_field(record.topic, record.partition))
    engine = BatchEngine(SnapshotFold(topics, keys), store, log=log, cache_bytes=0)
    return engine, decoded


async def test_a_refused_write_retries_only_the_conflicted_experiments() -> None:
    store = RefusingStore({"b": 1})
    engine, decoded = _engine(store)
    report, _ = await engine.apply(decoded)
    assert report.conflicts == 1
    assert store.rounds == [["a", "b"], ["b"]]
    assert report.applied == 2


async def test_the_engine_gives_up_after_max_attempts() -> None:
    store = RefusingStore({"a": 1000})
    engine, decoded = _engine(store)
    with pytest.raises(CasConflictError):
        await engine.apply(decoded)
    assert len(store.rounds) == MAX_CAS_ATTEMPTS


def test_env_var_names_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "k:1",
        "REDIS_URL": "redis://r:1/0",
        "MAB_TOPIC_PREFIX": "t.",
        "MAB_REDIS_PREFIX": "r.",
        "LOG_LEVEL": "debug",
        "MAB_CONSUMER_GROUP_ID": "g1",
        "MAB_MAX_BATCH_RECORDS": "7",
        "MAB_POLL_TIMEOUT_MS": "8",
        "MAB_SESSION_TIMEOUT_MS": "9000",
        "MAB_RETRY_BACKOFF_S": "0.5",
        "MAB_PROJECTOR_GROUP_ID": "g2",
        "MAB_PROJECTOR_MAX_BATCH_RECORDS": "11",
        "MAB_PROJECTOR_POLL_TIMEOUT_MS": "12",
        "MAB_PROJECTOR_SESSION_TIMEOUT_MS": "13000",
        "MAB_PROJECTOR_RETRY_BACKOFF_S": "1.5",
    }.items():
        monkeypatch.setenv(name, value)
    c = ConsumerSettings()
    p = ProjectorSettings()
    for s in (c, p):
        assert (s.kafka_bootstrap_servers, s.redis_url, s.log_level) == (
            "k:1",
            "redis://r:1/0",
            "DEBUG",
        )
        assert (s.mab_topic_prefix, s.mab_redis_prefix) == ("t.", "r.")
    assert (c.group_id, c.max_batch_records, c.poll_timeout_ms) == ("g1", 7, 8)
    assert (c.session_timeout_ms, c.retry_backoff_s) == (9000, 0.5)
    assert (p.group_id, p.max_batch_records, p.poll_timeout_ms) == ("g2", 11, 12)
    assert (p.session_timeout_ms, p.retry_backoff_s) == (13000, 1.5)


async def test_processors_redis_clients_have_socket_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hung Redis must fail a call, not hold it (and SIGTERM) forever: the bound is
    ours, whatever redis-py's default (tests/faults/test_runtime_redis_outage.py)."""
    defaults = ConsumerSettings(redis_url="redis://r:1/0").redis_client()
    assert isinstance(defaults, Redis)
    kw = defaults.connection_pool.connection_kwargs
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (5.0, 5.0)
    await defaults.aclose()
    monkeypatch.setenv("REDIS_SOCKET_TIMEOUT_S", "3.5")
    monkeypatch.setenv("REDIS_CONNECT_TIMEOUT_S", "2")
    for settings in (ConsumerSettings(), ProjectorSettings()):
        client = settings.redis_client()
        assert isinstance(client, Redis)
        kw = client.connection_pool.connection_kwargs
        assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (3.5, 2.0)
        await client.aclose()


def test_reports_sum_every_declared_counter() -> None:
    from collections import Counter
    from dataclasses import dataclass, field

    from stream_runtime.batch import SummableReport

    @dataclass(slots=True)
    class Report(SummableReport):
        records: int = 0
        seconds: float = 0.0
        rejected: Counter[str] = field(default_factory=Counter)

    total = Report()
    total.add(Report(3, 0.5, Counter(bad_json=1)))
    total.add(Report(4, 0.25, Counter(bad_json=2, unknown_arm=1)))
    assert total == Report(7, 0.75, Counter(bad_json=3, unknown_arm=1))
    assert total.as_dict() == {
        "records": 7,
        "seconds": 0.75,
        "rejected": {"bad_json": 3, "unknown_arm": 1},
    }


def test_rebalance_listener_tells_the_processor_on_every_move() -> None:
    """The processors drop their engine's cache on every assignment and revocation
    (KafkaBatchProcessor._rebalanced, then _settle_moves -> BatchEngine.forget)."""
    moves: list[str] = []
    listener = RebalanceLogger(log, lambda: moves.append("moved"))
    parts = [TopicPartition("t", 0), TopicPartition("t", 1)]
    listener.on_assign(None, parts)  # type: ignore[arg-type]  # the consumer is not used
    listener.on_revoke(None, parts[:1])  # type: ignore[arg-type]
    assert moves == ["moved", "moved"]


def test_reward_consumer_forgets_its_cache_on_a_rebalance() -> None:
    consumer = RewardConsumer(ConsumerSettings())
    settings = ConsumerSettings()
    engine = BatchEngine(
        SnapshotFold(consumer.topics, settings.keys), RedisStateStore(Redis()), log=log
    )
    engine._cache["exp"] = None  # type: ignore[assignment]  # only its presence matters
    consumer.engine = engine
    consumer._rebalanced()  # in a poll's thread: only counted, the engine may be busy
    assert engine._cache != {}
    assert consumer._settle_moves()  # on the loop, once the poll returned
    assert engine._cache == {}
    assert not consumer._settle_moves()


def test_freeze_startup_heap_collects_first_then_freezes_once() -> None:
    """Scenario: a fresh interpreter makes a reference cycle, drops it, then calls
    ``freeze_startup_heap`` twice.
    We expect: the cycle was collected, not frozen (a weak reference to it is dead); the
    heap is frozen after the first call; the second call changes nothing (a test
    session starts many apps, each would otherwise collect and freeze again)."""
    code = textwrap.dedent(
        """
        import gc, weakref
        from stream_runtime.process import freeze_startup_heap

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        assert gc.get_freeze_count() == 0
        freeze_startup_heap()
        first = gc.get_freeze_count()
        kept = Node()  # made after the freeze: not frozen by a second call
        freeze_startup_heap()
        print(ref() is None, first > 1000, gc.get_freeze_count() == first)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["True", "True", "True"]


def test_json_log_lines_write_counters_keyed_by_rejection() -> None:
    """Scenario: a batch skips records and its log line carries the counts by reason.
    We expect the reasons' labels as keys, not a logging error."""
    record = logging.makeLogRecord(
        {"msg": "records skipped", "skipped": {Rejection.UNKNOWN_ARM: 2}}
    )
    line = orjson.loads(JsonFormatter().format(record))
    assert line["skipped"] == {"unknown_arm": 2}

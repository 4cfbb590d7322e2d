"""The DLQ and ``mab dlq`` against the real broker, and idempotency across REST and Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from typer.testing import CliRunner

from bandit_core.state import ExperimentState
from schemas.dead_letter import H_REDRIVE_OFFSET, dedupe, redriven_origins
from schemas.redis_keys import RedisKeys
from services.reward_consumer import RewardConsumer
from stream_runtime.batch import Rejected
from stream_runtime.dead_letter import (
    DeadLetterProducer,
    dead_letter_producer,
    read_dead_letters,
)
from stream_runtime.kafka_consumer import KafkaRecord as Rec
from stream_runtime.redis_store import RedisStateStore
from stream_runtime.state_store import Write
from tests.fixtures.engines import fold_engine
from tests.fixtures.in_process import consumer_settings
from tests.fixtures.streams import LiveNamespace, put_config

pytestmark = pytest.mark.integration


ARMS = ("a", "b")


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def consume_until(live: LiveNamespace, group: str, records: int) -> RewardConsumer:
    """Run a reward consumer (group ``<ns><group>``) until it committed ``records`` records."""
    settings = consumer_settings(live.kafka_bootstrap, live.redis_url, live.ns, live.ns + group)
    consumer = RewardConsumer(settings)
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while consumer.stats.records < records:
            assert time.monotonic() < deadline, f"stuck at {consumer.stats.records}/{records}"
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
    return consumer


async def mab(*args: str) -> str:
    """Run the ``mab`` CLI (in a thread: it runs its own event loop); fail on exit != 0."""
    from mab_cli.main import app

    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def pulls(redis: Redis, ns: str, exp: str) -> dict[str, int]:
    raw = await redis.get(RedisKeys(ns).experiment(exp).snapshot)
    return {a: s.pulls for a, s in ExperimentState.from_snapshot(raw, exp).arms.items()}


async def test_dlq_count_dedupes_redelivery_and_redrive_keeps_idempotency(
    live: LiveNamespace,
    tmp_path: Path,
) -> None:
    """Scenario: rewards for an experiment created only later, out-of-range rewards and a
    broken record are dead-lettered; a second consumer group re-reads everything (as a
    batch redelivered after a crash would) and dead-letters them again.
    We expect: ``mab dlq count`` counts each source position once; re-driving by reason
    once the experiment exists applies those rewards exactly once even when re-driven
    twice; an exported, fixed file re-drives the corrected rewards, also exactly once."""
    await put_config(live.redis, live.ns, "shop", ARMS)
    late = [
        ("late", orjson.dumps({"experiment_id": "late", "arm_id": arm, "reward": r, **extra}))
        for arm, r, extra in [("a", 1.0, {}), ("b", 0.5, {}), ("a", 1, {"event_id": "e"})]
    ]
    # Out of range for every experiment (above the ceiling of amounts, and negative): the
    # decoder rejects them, so a second group dead-letters them again. (100 would be
    # refused by the fold for this binary experiment instead, once: a redelivery of a
    # record whose outcome is stored with the state is dropped by the offset guard.)
    out_of_range = [
        ("shop", orjson.dumps({"experiment_id": "shop", "arm_id": "a", "reward": 2_000_000})),
        ("shop", orjson.dumps({"experiment_id": "shop", "arm_id": "b", "reward": -1})),
    ]
    broken = [("shop", b'{"experiment_id": "shop", "arm_id": ')]
    records = [*late, *out_of_range, *broken]
    await produce(live.kafka_bootstrap, live.names.rewards, records)
    await consume_until(live, "g1", len(records))
    await consume_until(live, "g2", len(records))

    common = ["--bootstrap", live.kafka_bootstrap, "--prefix", live.ns]
    counted = orjson.loads(await mab("dlq", "count", "--json", *common))
    assert counted["by_reason"] == {
        "unknown_experiment": 3,
        "reward_out_of_range": 2,
        "bad_json": 1,
    }
    assert counted["dlq_records"] == 12  # every reject twice; counted once per position
    text = await mab("dlq", "count", *common)
    assert "       3  unknown_experiment" in text
    assert "6  open (one per source position; 0 re-driven, 12 DLQ records" in text
    text = await mab("dlq", "list", "--reason", "reward_out_of_range", "--limit", "1", *common)
    assert text.count("reward_out_of_range") == 1
    listed = [
        orjson.loads(line)
        for line in (
            await mab("dlq", "list", "--json", "--reason", "bad_json", *common)
        ).splitlines()
    ]
    assert [(r["reason"], r["value"]) for r in listed] == [("bad_json", broken[0][1].decode())]
    assert listed[0]["detail"]
    assert listed[0]["origin"].startswith(live.names.rewards + ":")

    # The cause is fixed: the experiment exists now. Re-drive twice; apply once.
    await put_config(live.redis, live.ns, "late", ARMS)
    assert "3 records re-driven" in await mab(
        "dlq", "redrive", "--reason", "unknown_experiment", *common
    )
    await consume_until(live, "g1", 3)
    assert await pulls(live.redis, live.ns, "late") == {"a": 2, "b": 1}
    again = await mab(
        "dlq", "redrive", "--reason", "unknown_experiment", "--include-redriven", *common
    )
    assert "3 records re-driven" in again
    consumer = await consume_until(live, "g1", 3)
    assert consumer.stats.duplicates == 3
    assert await pulls(live.redis, live.ns, "late") == {"a": 2, "b": 1}
    counted = orjson.loads(await mab("dlq", "count", "--json", *common))
    assert counted["by_reason"] == {"reward_out_of_range": 2, "bad_json": 1}
    assert counted["redriven"] == 3

    # Export the out-of-range ones, fix their reward, re-drive from the file (twice).
    export = tmp_path / "dlq.jsonl"
    await mab("dlq", "export", "--out", str(export), "--reason", "reward_out_of_range", *common)
    rows = [orjson.loads(line) for line in export.read_bytes().splitlines()]
    assert len(rows) == 2
    fixed = tmp_path / "fixed.jsonl"
    with fixed.open("wb") as f:
        for row in rows:
            value: dict[str, Any] = orjson.loads(row["value"])
            value["reward"] = min(1.0, max(0.0, value["reward"]))
            f.write(orjson.dumps({**row, "value": value}) + b"\n")
    for _ in range(2):
        assert "2 records re-driven" in await mab("dlq", "redrive", "--from", str(fixed), *common)
    await consume_until(live, "g1", 4)
    assert await pulls(live.redis, live.ns, "shop") == {"a": 1, "b": 1}
    counted = orjson.loads(await mab("dlq", "count", "--json", *common))
    assert counted["by_reason"] == {"bad_json": 1}

    # A re-driven record that is still bad comes back as open, under its origin.
    await mab("dlq", "redrive", "--reason", "bad_json", *common)
    await consume_until(live, "g1", 1)
    letters = await read_dead_letters(live.kafka_bootstrap, live.names.rewards_dlq)
    closed = redriven_origins(letters)
    still = [d for d in dedupe(letters) if d.origin not in closed]
    assert [d.reason for d in still] == ["bad_json"]
    assert still[0].position != still[0].origin  # rejected at its re-driven position
    assert any(k == H_REDRIVE_OFFSET for k, _ in still[0].headers)


async def test_event_id_counts_once_whether_sent_over_rest_or_kafka(
    live: LiveNamespace,
    client: httpx.AsyncClient,
) -> None:
    """Scenario: the same reward (same event_id) arrives once over POST /reward and once
    straight from a bulk producer, in both orders; a reward for a decision is sent over
    REST and again (new event id) into Kafka.
    We expect: each is applied once (the fold dedupes by ``e:<event_id>`` and
    ``d:<decision_id>`` whatever path the record took)."""
    r = await client.post(
        "/experiments",
        json={"experiment_id": "idem", "arm_ids": ["a", "b"], "strategy": "thompson"},
    )
    assert r.status_code == 201, r.text
    decision = (await client.get("/decision", params={"experiment_id": "idem"})).json()

    async def rest(body: dict[str, Any]) -> None:
        resp = await client.post("/reward", json={"experiment_id": "idem", **body})
        assert resp.status_code == 200, resp.text

    async def kafka(body: dict[str, Any]) -> None:
        value = orjson.dumps({"experiment_id": "idem", **body})
        await produce(live.kafka_bootstrap, live.names.rewards, [("idem", value)])

    await rest({"arm_id": "a", "reward": 1.0, "event_id": "rest-first"})
    await kafka({"arm_id": "a", "reward": 1.0, "event_id": "rest-first"})
    await kafka({"arm_id": "b", "reward": 1.0, "event_id": "kafka-first"})
    await rest({"arm_id": "b", "reward": 1.0, "event_id": "kafka-first"})
    arm = decision["arm_id"]
    await rest({"arm_id": arm, "reward": 0.5, "decision_id": decision["decision_id"]})
    await kafka({"arm_id": arm, "reward": 0.5, "decision_id": decision["decision_id"]})

    consumer = await consume_until(live, "idem", 7)
    assert consumer.stats.applied == 4  # three rewards + the decision itself
    assert consumer.stats.duplicates == 3
    got = await pulls(live.redis, live.ns, "idem")
    assert got == {"a": 1 + (arm == "a"), "b": 1 + (arm == "b")}


async def test_record_at_the_broker_limit_is_dead_lettered_with_its_bytes(
    live: LiveNamespace,
) -> None:
    """Scenario: a producer writes a record just under the broker's default 1 MiB limit
    (far over MAX_RECORD_BYTES) into the rewards topic.
    We expect: it is dead-lettered as ``oversize`` with every original byte, although
    the dead letter (value + headers) is larger than the source topic would accept."""
    value = b'{"pad":"' + b"x" * 1_048_400 + b'"}'
    producer = AIOKafkaProducer(
        bootstrap_servers=live.kafka_bootstrap, acks="all", max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        await producer.send_and_wait(live.names.rewards, value, key=b"big")
    finally:
        await producer.stop()
    await consume_until(live, "big", 1)
    (letter,) = await read_dead_letters(live.kafka_bootstrap, live.names.rewards_dlq)
    assert letter.reason == "oversize"
    assert letter.value == value
    assert len(value) + sum(len(k) + len(v) for k, v in letter.headers) > 1_048_588


async def test_fold_rejects_reach_the_dlq_before_the_write_that_hides_them(
    live: LiveNamespace,
) -> None:
    """Scenario: a batch with valid rewards, an unknown arm and broken JSON is written to
    Redis, then the consumer dies before its Kafka commit; the batch is redelivered.
    We expect: the dead letters were acknowledged before the Redis write; the redelivery
    is a no-op for the fold (offset check), re-parks only the decode reject, and the DLQ
    still lists each rejected record exactly once with its reason."""
    await put_config(live.redis, live.ns, "crash", ARMS)
    ok = orjson.dumps({"experiment_id": "crash", "arm_id": "a", "reward": 1})
    bad_arm = orjson.dumps({"experiment_id": "crash", "arm_id": "zz", "reward": 1})
    recs = [
        Rec(live.names.rewards, 2, 10, 1_700_000_000_000, ok, b"crash"),
        Rec(live.names.rewards, 2, 11, 1_700_000_000_000, bad_arm, b"crash"),
        Rec(live.names.rewards, 2, 12, 1_700_000_000_000, b"{oops", b"crash"),
        Rec(live.names.rewards, 2, 13, 1_700_000_000_000, ok, b"crash"),
    ]
    steps: list[str] = []
    producer = dead_letter_producer(live.kafka_bootstrap, "test-dlq")
    await producer.start()
    try:
        parked = DeadLetterProducer(producer, live.names.rewards_dlq, "test/handler")

        async def sink(rejects: Sequence[Rejected]) -> None:
            await parked(rejects)
            steps.append("dlq:" + ",".join(r.reason for r in rejects))

        store = RedisStateStore(live.redis)
        real_write = store.write

        async def write(writes: Sequence[Write], now: float) -> list[str]:
            steps.append(f"write:{len(writes)}")
            return await real_write(writes, now)

        store.write = write  # type: ignore[method-assign]
        handler = fold_engine(store, live.ns, sink)
        first = await handler.handle(recs)
        second = await handler.handle(recs)  # redelivered: crash before the commit
    finally:
        await producer.stop()
    assert steps == ["dlq:bad_json", "dlq:unknown_arm", "write:1", "dlq:bad_json", "write:0"]
    assert (first.applied, first.rejected) == (2, {"bad_json": 1, "unknown_arm": 1})
    assert (second.applied, second.redelivered) == (0, 3)
    letters = await read_dead_letters(live.kafka_bootstrap, live.names.rewards_dlq)
    assert len(letters) == 3
    current = dedupe(letters)
    assert sorted((d.source_offset, d.reason) for d in current) == [
        (11, "unknown_arm"),
        (12, "bad_json"),
    ]
    assert {d.value for d in current} == {bad_arm, b"{oops"}
    assert all(d.rejected_by == "test/handler" and d.key == b"crash" for d in current)
    assert await pulls(live.redis, live.ns, "crash") == {"a": 2}

"""``POST /rewards`` on the real decider: all-or-nothing batches with per-item errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import decode_reward
from schemas.topics import TopicNames

pytestmark = pytest.mark.integration


async def rewards_in_log(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of the rewards topic (all partitions, start to current end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [decode_reward(r.value).model_dump() for r in records]
        return out
    finally:
        await consumer.stop()


async def test_batch_is_all_or_nothing_with_per_item_errors(
    client: httpx.AsyncClient, kafka_bootstrap: str, ns: str
) -> None:
    """Scenario: a batch with valid rewards and four kinds of bad items, then the same
    batch fixed.
    We expect: 422 naming each bad item by index and nothing in the log; then 200 after
    Kafka acknowledged every reward, all in the log with their event ids."""
    names = TopicNames.with_prefix(ns)
    r = await client.post("/experiments", json={"experiment_id": "batch", "arm_ids": ["a", "b"]})
    assert r.status_code == 201, r.text
    good = [
        {"experiment_id": "batch", "arm_id": "a", "reward": 1},
        {"experiment_id": "batch", "arm_id": "b", "reward": 0.25, "event_id": "order-7"},
    ]
    bad: list[Any] = [
        {"experiment_id": "batch", "arm_id": "zz", "reward": 1.0},  # unknown arm
        {"experiment_id": "nope", "arm_id": "a", "reward": 1.0},  # unknown experiment
        {"experiment_id": "batch", "arm_id": "a", "reward": 2.0},  # above 1: binary
        "not an object",
    ]
    r = await client.post("/rewards", json={"rewards": [good[0], *bad, good[1]]})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert sorted({e["index"] for e in errors}) == [1, 2, 3, 4]
    by_index = {e["index"]: e for e in errors}
    assert by_index[1]["type"] == "unknown_arm"
    assert by_index[2]["type"] == "unknown_experiment"
    assert by_index[3]["type"] == "reward_out_of_range"
    assert "reward_type=binary" in by_index[3]["msg"]
    assert await rewards_in_log(kafka_bootstrap, names.rewards) == []

    r = await client.post("/rewards", json={"rewards": good})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert body["event_ids"][1] == "order-7"
    logged = await rewards_in_log(kafka_bootstrap, names.rewards)
    assert sorted(e["event_id"] for e in logged) == sorted(body["event_ids"])
    assert {e["source"] for e in logged} == {"api"}


async def test_batch_limit_and_shape(client: httpx.AsyncClient) -> None:
    item = {"experiment_id": "x", "arm_id": "a", "reward": 1.0}
    r = await client.post("/rewards", json={"rewards": [item] * 1001})
    assert r.status_code == 422
    assert "limit is 1000" in r.json()["detail"]
    assert (await client.post("/rewards", json={"rewards": []})).status_code == 422
    assert (await client.post("/rewards", json=[item])).status_code == 422

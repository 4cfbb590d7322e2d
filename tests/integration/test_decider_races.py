"""Concurrent commands on one experiment: the stored config and the log agree.

Replaying the experiments topic must rebuild the config Redis holds, so the config
events of one experiment must reach the log in the order their versions were stored.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import decode
from schemas.events import ArmsAdded, ExperimentConfig, ExperimentCreated, StrategyChanged
from schemas.topics import TopicNames

pytestmark = pytest.mark.integration

ConfigEvent = ExperimentCreated | ArmsAdded | StrategyChanged


async def config_events(
    bootstrap: str, topic: str, partitions: int, experiment_id: str
) -> list[ConfigEvent]:
    """Every config-carrying event of one experiment, in log order (all partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[ConfigEvent] = []
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    assert r.value is not None
                    event = decode(r.value)
                    if event.experiment_id == experiment_id and isinstance(
                        event, ExperimentCreated | ArmsAdded | StrategyChanged
                    ):
                        out.append(event)
        return out
    finally:
        await consumer.stop()


async def test_concurrent_config_changes_replay_to_the_stored_config(
    client: httpx.AsyncClient, kafka_bootstrap: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: 24 strategy changes and 8 add-arms race on one experiment. We expect all
    to succeed, versions 1..33 each logged once, in increasing order in the log, and the
    last config event to equal the config stored in Redis (what a replay rebuilds)."""
    exp = f"{ns}race"
    r = await client.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
    assert r.status_code == 201
    changes = [
        {"experiment_id": exp, "strategy": "epsilon_greedy", "strategy_params": {"epsilon": e}}
        for e in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
    ] + [
        {"experiment_id": exp, "strategy": s, "strategy_params": {}}
        for s in ("ucb1", "thompson") * 8
    ]
    results = await asyncio.gather(
        *(client.post("/config", json=body) for body in changes),
        *(client.post(f"/experiments/{exp}/arms", json={"arm_ids": [f"n{i}"]}) for i in range(8)),
    )
    assert [x.status_code for x in results] == [200] * len(results)
    shown = (await client.get(f"/experiments/{exp}")).json()
    units = shown.pop("units")  # the visitor-assignment settings, shown grouped
    stored = ExperimentConfig.model_validate({**shown, **units, "created_ts": 0, "updated_ts": 0})
    name = TopicNames.with_prefix(ns).experiments
    events = await config_events(kafka_bootstrap, name, topics[name], exp)
    versions = [e.config.version for e in events]
    assert versions == list(range(1, 2 + len(results))), versions
    last = events[-1].config
    assert (last.arm_ids, last.strategy, dict(last.strategy_params), last.version) == (
        stored.arm_ids,
        stored.strategy,
        dict(stored.strategy_params),
        stored.version,
    )

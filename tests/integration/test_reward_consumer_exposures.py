"""Exposures produced straight to Kafka, judged by the reward consumer on the real stack.

The decider, the reward consumer and the projector run in process on one namespace of
the real broker and Redis; exposures are produced with a plain Kafka producer, the way
an edge worker would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from mab_client.local import allocation_of
from schemas.dead_letter import dedupe
from schemas.topics import TopicNames
from services.reward_consumer import RewardConsumer
from stream_runtime.dead_letter import read_dead_letters
from tests.fixtures.in_process import consumer_settings, create_with_allocation, in_process
from tests.fixtures.streams import Outgoing, decisions_in_log, produce

pytestmark = pytest.mark.integration

ARMS = ["blue-button", "green-button", "Free Shipping"]


async def test_exposures_on_kafka_become_decisions_once_and_bad_ones_reach_the_dlq(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: an experiment; one exposure posted over REST; then on the exposures
    topic 300 good exposures (the REST one among them again, and one twice), each kind
    of bad record, and, half-way, the consumer restarted; finally a consumer of a new
    group re-reads the whole topic (every commit lost).
    We expect: each good exposure once in the decisions topic and once in the folded
    stats; each bad record in the DLQ with its reason; the re-read produces nothing."""
    exp = f"{ns}edge"
    names = TopicNames.with_prefix(ns)
    services = in_process(kafka_bootstrap, redis_url, ns)
    async with services.serving() as c:
        allocation = await create_with_allocation(c, exp, ARMS)
        rule = allocation_of(allocation)

        def item(i: int, **fields: Any) -> dict[str, Any]:
            unit = f"visitor-{i}"
            body = {
                "experiment_id": exp,
                "unit_id": unit,
                "arm_id": rule.choose(unit).arm_id,
                "allocation_version": allocation.version,
                "exposure_id": f"x-{i}",
                "ts": time.time(),
            }
            return {**body, **fields}

        r = await c.post("/exposures", json={"exposures": [item(0)]})
        assert r.json()["accepted"] == 1, r.text

        wrong = next(a for a in ARMS if a != item(1)["arm_id"])
        bad: dict[str, bytes] = {
            "bad_json": b'{"experiment_id": "' + exp.encode(),
            "missing_field": orjson.dumps({k: v for k, v in item(1).items() if k != "unit_id"}),
            "unknown_arm": orjson.dumps(item(1, arm_id="purple", exposure_id="b-1")),
            "unknown_allocation": orjson.dumps(
                item(1, allocation_version=allocation.version - 9, exposure_id="b-2")
            ),
            "arm_not_assigned": orjson.dumps(item(1, arm_id=wrong, exposure_id="b-3")),
            "unknown_experiment": orjson.dumps(item(1, experiment_id=f"{ns}nope")),
        }
        topic = names.exposures
        good = [Outgoing(topic, exp, orjson.dumps(item(i))) for i in range(150)]  # x-0: REST
        good.append(good[7])  # the same record produced twice
        first = [*good, *(Outgoing(topic, exp, v) for v in bad.values())]
        second = [Outgoing(topic, exp, orjson.dumps(item(i))) for i in range(150, 300)]

        await produce(kafka_bootstrap, first)
        await asyncio.sleep(0.5)
        await services.consumer.stop()  # restarted mid-stream
        await services.consumer.start()
        await produce(kafka_bootstrap, second)

        deadline = time.monotonic() + 60
        while True:
            stats = (await c.get(f"/experiments/{exp}/stats")).json()
            folded = sum(int(a["decisions"]) for a in stats["arms"])
            if folded >= 300 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert folded == 300

        # Every commit lost: a new group judges the whole topic again.
        settings = consumer_settings(kafka_bootstrap, redis_url, ns, ns + "again")
        again = RewardConsumer(settings)
        await again.start()
        try:
            total = len(first) + len(second)
            while again.exposure_stats.records < total:
                assert time.monotonic() < deadline + 60, again.exposure_stats
                await asyncio.sleep(0.05)
        finally:
            await again.stop()
        # x-0 (marked over REST) and x-7 (produced twice) were duplicates the first time.
        judged = services.consumer.exposure_stats
        assert (judged.exposures_accepted, judged.exposures_duplicate) == (299, 2)
        # The re-read: the offsets stored with the marks drop every record of the
        # experiment, refusals included; the other three are refused again.
        assert again.exposure_stats.exposures_accepted == 0
        assert again.exposure_stats.redelivered == len(first) + len(second) - 3
        await asyncio.sleep(1.0)  # anything the re-read produced would be folded by now
        stats = (await c.get(f"/experiments/{exp}/stats")).json()
        assert sum(int(a["decisions"]) for a in stats["arms"]) == 300

    logged = await decisions_in_log(kafka_bootstrap, names.decisions)
    assert Counter(ev.exposure_id for ev in logged) == {f"x-{i}": 1 for i in range(300)}
    for ev in logged:
        chosen = rule.choose(f"visitor-{(ev.exposure_id or '')[2:]}")
        assert (ev.arm_id, ev.propensity) == (chosen.arm_id, chosen.propensity)
    letters = await read_dead_letters(kafka_bootstrap, names.rewards_dlq)
    assert {d.source_topic for d in letters} == {names.exposures}
    assert Counter(d.reason for d in dedupe(letters)) == Counter(bad.keys())

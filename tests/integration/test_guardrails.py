"""Guardrails end to end (real Kafka and Redis; decider, reward consumer and projector in
process): the settings' bad input over REST, metrics on rewards checked over REST and
Kafka, a clearly worse arm breached, the ``GuardrailBreached`` event on the experiments
topic, the arm paused in decisions and ``/stats``, and ``mab replay --verify`` rebuilding
the same breach and pause from the log.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from mab_client.models import StatsPublic
from schemas.codec import decode
from schemas.events import GuardrailBreached
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from stream_runtime.dead_letter import read_dead_letters
from tests.fixtures.faults import read_topics
from tests.fixtures.in_process import in_process, wait_for
from tests.fixtures.streams import run_replay, send_stamped

pytestmark = pytest.mark.integration

ARMS = ["control", "treat"]
GUARDED: dict[str, Any] = {
    "arm_ids": ARMS,
    "strategy": "thompson",
    "metrics": [{"name": "refund", "min": 0, "max": 1}],
    "guardrails": [
        {
            "metric": "refund",
            "direction": "increase_is_bad",
            "max_absolute_change": 0.05,
            "min_samples": 40,
            "action": "pause",
        }
    ],
    "control_arm_id": "control",
}


async def test_bad_guardrail_settings_and_metrics_are_refused_with_nothing_stored(
    client: httpx.AsyncClient, ns: str
) -> None:
    """Scenario: creates with a guardrail on an undeclared metric, a control arm not in
    the experiment; then /config changing a guardrail setting; then rewards with an
    undeclared metric and an out-of-range value. We expect 422 naming the setting or the
    metric each time, and no experiment stored by a refused create."""
    exp = f"{ns}guarded"
    c = client
    bad_metric = {**GUARDED, "guardrails": [{**GUARDED["guardrails"][0], "metric": "returns"}]}
    r = await c.post("/experiments", json={"experiment_id": exp, **bad_metric})
    assert r.status_code == 422, r.text
    assert "guardrail on 'returns': the metric is not declared" in r.text
    r = await c.post("/experiments", json={"experiment_id": exp, **GUARDED, "control_arm_id": "x"})
    assert r.status_code == 422, r.text
    assert "control_arm_id 'x' is not an arm of the experiment" in r.text
    assert (await c.get(f"/experiments/{exp}")).status_code == 404

    r = await c.post("/experiments", json={"experiment_id": exp, **GUARDED})
    assert r.status_code == 201, r.text
    r = await c.post(
        "/config", json={"experiment_id": exp, "strategy": "ucb1", "guardrail_alpha": 0.1}
    )
    assert r.status_code == 422, r.text
    assert "guardrail_alpha cannot change after creation" in r.text
    # a strategy swap keeps the guardrail settings (the config scripts copy their text)
    r = await c.post("/config", json={"experiment_id": exp, "strategy": "thompson"})
    assert r.status_code == 200, r.text
    stats = (await c.get(f"/experiments/{exp}/stats")).json()
    assert [g["status"] for g in stats["arms"][1]["guardrails"]] == ["waiting"]

    base = {"experiment_id": exp, "arm_id": "treat", "reward": 1.0}
    r = await c.post("/reward", json={**base, "metrics": {"returns": 1}})
    assert r.status_code == 422, r.text
    assert "metric 'returns' is not declared by the experiment" in r.json()["detail"]
    r = await c.post("/reward", json={**base, "metrics": {"refund": 3}})
    assert r.status_code == 422, r.text
    assert "metric 'refund': value 3.0 is outside its range [0, 1]" in r.json()["detail"]
    r = await c.post("/rewards", json={"rewards": [base, {**base, "metrics": {"refund": -1}}]})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert (error["index"], error["type"]) == (1, "bad_metric")


@pytest.mark.timeout(300)
async def test_a_worse_arm_is_breached_paused_and_replay_reproduces_it(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: a binary experiment with a refund guardrail (treat against control,
    absolute limit 0.05, 40 samples); 120 rewards per arm with metrics over POST /rewards,
    treat refunding 60 % and control none, plus one record with an undeclared metric
    straight to Kafka. We expect one GuardrailBreached (treat) on the experiments topic,
    treat paused (propensity 0, never decided, "breached" in /stats), the Kafka record
    dead-lettered as bad_metric, and ``mab replay --verify`` identical (the replayed
    snapshot holds the same sequences, breach and pause)."""
    exp = f"{ns}checkout"
    names = TopicNames.with_prefix(ns)
    services = in_process(kafka_bootstrap, redis_url, ns)
    consumer = services.consumer
    async with services.serving() as c:
        r = await c.post("/experiments", json={"experiment_id": exp, **GUARDED})
        assert r.status_code == 201, r.text
        items = [
            {
                "experiment_id": exp,
                "arm_id": arm,
                "reward": 1.0,
                "event_id": f"r-{arm}-{i}",
                "metrics": {"refund": 1 if arm == "treat" and i % 5 < 3 else 0},
            }
            for i in range(120)
            for arm in ARMS
        ]
        for start in range(0, len(items), 80):
            r = await c.post("/rewards", json={"rewards": items[start : start + 80]})
            assert r.status_code == 200, r.text
        undeclared = orjson.dumps(
            {"experiment_id": exp, "arm_id": "treat", "reward": 1, "metrics": {"returns": 1}}
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await send_stamped(producer, [(names.rewards, exp, undeclared)])
        await wait_for(lambda: consumer.stats.records >= len(items) + 1, 60, "rewards folded")
        assert consumer.stats.applied >= len(items)
        assert dict(consumer.stats.rejected) == {"bad_metric": 1}

        stats = StatsPublic.model_validate_json((await c.get(f"/experiments/{exp}/stats")).content)
        treat, control = stats.arm("treat"), stats.arm("control")
        assert treat.paused is True
        assert control.paused is None
        assert treat.propensity == 0.0
        assert treat.guardrails is not None
        assert [g.status for g in treat.guardrails] == ["breached"]
        assert control.guardrails is not None
        assert [g.status for g in control.guardrails] == ["control"]
        assert treat.metrics is not None
        assert control.metrics is not None
        assert treat.metrics["refund"].samples == 120
        assert treat.metrics["refund"].low > control.metrics["refund"].high + 0.05

        served: list[str] = []
        for _ in range(100):  # the decider's cache refreshes within its staleness bound
            r = await c.get("/decision", params={"experiment_id": exp})
            assert r.status_code == 200, r.text
            served.append(r.json()["arm_id"])
            await asyncio.sleep(0.01)
        assert "treat" not in served[-50:]

    (letter,) = await read_dead_letters(kafka_bootstrap, names.rewards_dlq)
    assert letter.reason == "bad_metric"
    assert "metric 'returns' is not declared" in letter.detail
    logged = [decode(r.value or b"") for r in read_topics(kafka_bootstrap, [names.experiments])]
    breaches = [e for e in logged if isinstance(e, GuardrailBreached)]
    assert [(b.arm_id, b.control_arm_id, b.metric, b.action) for b in breaches] == [
        ("treat", "control", "refund", "pause")
    ]
    assert breaches[0].event_id == f"gb-{exp}-treat-0"
    assert breaches[0].arm_samples >= 40

    redis = Redis.from_url(redis_url)
    try:
        snap = orjson.loads(await redis.get(RedisKeys(ns).experiment(exp).snapshot) or b"{}")
    finally:
        await redis.aclose()
    assert snap["guardrails"]["breaches"] == [["treat", 0, "pause"]]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
    }
    ok = await asyncio.to_thread(run_replay, env, "--verify", "--workers", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "identical" in ok.stdout

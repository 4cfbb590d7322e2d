"""Reward types end to end (real Kafka and Redis; decider, reward consumer and projector
in process): the settings on create and ``/config``, amounts accepted and folded on a
continuous experiment (with the revenue sampler), refused on a binary one over REST and
dead-lettered over Kafka.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from bandit_core.strategies import STRATEGIES
from mab_client.models import ExperimentPublic, StatsPublic
from schemas.codec import decode
from schemas.events import ArmsAdded, ExperimentCreated, StrategyChanged
from schemas.topics import TopicNames
from stream_runtime.dead_letter import read_dead_letters
from tests.fixtures.faults import read_topics
from tests.fixtures.in_process import in_process, wait_for
from tests.fixtures.streams import send_stamped

pytestmark = pytest.mark.integration

ARMS = ["standard", "upsell"]


@pytest.fixture
def continuous_strategy() -> str:
    """The revenue sampler: a registered strategy that learns from continuous rewards."""
    assert "continuous" in STRATEGIES["revenue_thompson"].reward_types
    return "revenue_thompson"


async def create(c: httpx.AsyncClient, exp: str, **body: Any) -> httpx.Response:
    return await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ARMS, **body})


async def test_settings_on_create_config_and_get(
    client: httpx.AsyncClient, kafka_bootstrap: str, ns: str, continuous_strategy: str
) -> None:
    """Scenario: experiments created with every reward setting, good and bad, then
    changed by /config and add-arms. We expect the settings stored, logged and shown (a
    binary experiment answers in the original API's shape), a strategy that does not
    learn from the reward type refused on create and on /config (naming both), a cap
    refused without reward_type=continuous, the settings refused on /config (fixed at
    creation), and nothing stored or logged by a refused command."""
    exp = f"{ns}basket"
    names = TopicNames.with_prefix(ns)
    c = client
    r = await create(c, exp, strategy="thompson", reward_type="continuous")
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(
        "strategy 'thompson' learns from binary rewards; reward_type=continuous needs a "
        "strategy for continuous rewards ("
    )
    assert continuous_strategy in r.json()["detail"]
    r = await create(c, exp, reward_type="continuous")  # the server's default: thompson
    assert r.status_code == 422, r.text
    r = await create(c, exp, strategy=continuous_strategy, reward_cap=100)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"] == (
        "Value error, reward_cap is only allowed with reward_type=continuous (a binary "
        "reward is at most 1)"
    )
    assert (await c.get(f"/experiments/{exp}")).status_code == 404

    r = await create(c, exp, strategy=continuous_strategy, reward_type="continuous", reward_cap=250)
    assert r.status_code == 201, r.text
    assert (r.json()["reward_type"], r.json()["reward_cap"]) == ("continuous", 250)
    r = await c.post("/config", json={"experiment_id": exp, "strategy": "ucb1"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(
        f"experiment {exp!r}: strategy 'ucb1' learns from binary rewards; "
        "reward_type=continuous needs"
    )
    for change in ({"reward_type": "binary"}, {"reward_cap": None}, {"reward_cap": 10}):
        body = {"experiment_id": exp, "strategy": continuous_strategy, **change}
        r = await c.post("/config", json=body)
        assert r.status_code == 422, r.text
        assert f"{next(iter(change))} cannot change after creation" in r.text
    # Arms added and a strategy swap keep the reward settings (the Lua scripts rewrite
    # the config from its stored text).
    assert (await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["bundle"]})).is_success
    r = await c.post("/config", json={"experiment_id": exp, "strategy": continuous_strategy})
    assert r.status_code == 200, r.text
    assert (r.json()["reward_type"], r.json()["reward_cap"]) == ("continuous", 250)
    shown = ExperimentPublic.model_validate_json((await c.get(f"/experiments/{exp}")).content)
    assert (shown.reward_type, shown.reward_cap, shown.version) == ("continuous", 250, 3)

    binary = f"{ns}checkout"
    r = await create(c, binary, strategy="thompson")
    assert r.status_code == 201, r.text
    assert "reward_type" not in r.json()  # the original API's shape
    r = await c.post("/config", json={"experiment_id": binary, "strategy": "ucb1"})
    assert r.status_code == 200, r.text
    assert "reward_type" not in r.json()
    # Event-sourced: the log holds the accepted commands, each with its whole config;
    # the refused commands logged nothing.
    logged = [decode(r.value or b"") for r in read_topics(kafka_bootstrap, [names.experiments])]
    commands = ExperimentCreated | ArmsAdded | StrategyChanged
    configs = [e.config for e in logged if isinstance(e, commands)]
    # Sorted: the two experiments' records may sit on any two partitions of the topic.
    assert sorted((c.experiment_id, c.version, c.reward_type, c.reward_cap) for c in configs) == [
        (exp, 1, "continuous", 250),
        (exp, 2, "continuous", 250),
        (exp, 3, "continuous", 250),
        (binary, 1, "binary", None),
        (binary, 2, "binary", None),
    ]


async def test_an_amount_is_folded_on_a_continuous_experiment_and_refused_on_a_binary_one(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], continuous_strategy: str
) -> None:
    """Scenario: an order value of 42.5 (and one of 900 above the cap of 100) posted to a
    continuous experiment, the same 42.5 to a binary one, over POST /reward and
    POST /rewards. We expect 200 and the amounts folded (the stats learn 42.5 + 100, the
    projector's sums keep the raw 942.5), and 422 naming reward_type on the binary one
    with nothing logged for it."""
    amounts, conversions = f"{ns}basket value", f"{ns}checkout"
    services = in_process(kafka_bootstrap, redis_url, ns)
    async with services.serving() as c:
        r = await create(
            c, amounts, strategy=continuous_strategy, reward_type="continuous", reward_cap=100
        )
        assert r.status_code == 201, r.text
        assert (await create(c, conversions, strategy="thompson")).status_code == 201

        r = await c.post(
            "/reward", json={"experiment_id": amounts, "arm_id": "upsell", "reward": 42.5}
        )
        assert r.status_code == 200, r.text
        item = {"experiment_id": amounts, "arm_id": "upsell", "reward": 900}
        r = await c.post("/rewards", json={"rewards": [item]})
        assert r.status_code == 200, r.text

        bad = {"experiment_id": conversions, "arm_id": "upsell", "reward": 42.5}
        r = await c.post("/reward", json=bad)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == (
            "reward 42.5 is outside [0, 1] for a binary experiment (reward_type=binary)"
        )
        r = await c.post("/rewards", json={"rewards": [{**bad, "reward": 1.0}, bad]})
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert (error["index"], error["type"]) == (1, "reward_out_of_range")
        assert "reward_type=binary" in error["msg"]
        r = await c.post("/reward", json={**bad, "reward": 2e6})  # above the ceiling: any
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "reward"]

        consumer, projector = services.consumer, services.projector
        await wait_for(lambda: consumer.stats.applied >= 2, 30, "amounts folded")
        await wait_for(lambda: projector.stats.applied >= 2, 30, "amounts projected")
        stats = StatsPublic.model_validate_json(
            (await c.get(f"/experiments/{amounts}/stats")).content
        )
        series = (await c.get(f"/experiments/{amounts}/timeseries?bucket=hour")).json()
    upsell = stats.arm("upsell")
    assert upsell.pulls == 2
    assert upsell.reward_sum == pytest.approx(142.5)
    assert consumer.stats.rejected == {}
    raw_sum = sum(p["reward_sum"] for p in series["points"] if p["arm_id"] == "upsell")
    assert raw_sum == pytest.approx(942.5)


async def test_an_amount_straight_to_kafka_on_a_binary_experiment_is_dead_lettered(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: a bulk producer writes an order value of 42.5 straight to the rewards
    topic of a binary experiment, then a conversion of 1. We expect the 42.5 in the DLQ
    with reason reward_out_of_range and a detail naming reward_type, its bytes kept, and
    only the conversion folded."""
    exp = f"{ns}checkout"
    names = TopicNames.with_prefix(ns)
    services = in_process(kafka_bootstrap, redis_url, ns)
    async with services.serving() as c:
        assert (await create(c, exp, strategy="thompson")).status_code == 201
        amount = orjson.dumps({"experiment_id": exp, "arm_id": "upsell", "reward": 42.5})
        conversion = orjson.dumps({"experiment_id": exp, "arm_id": "upsell", "reward": 1})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await send_stamped(
            producer, [(names.rewards, exp, amount), (names.rewards, exp, conversion)]
        )
        consumer = services.consumer
        await wait_for(lambda: consumer.stats.records >= 2, 30, "records folded")
        stats = StatsPublic.model_validate_json((await c.get(f"/experiments/{exp}/stats")).content)
    assert dict(consumer.stats.rejected) == {"reward_out_of_range": 1}
    assert (stats.arm("upsell").pulls, stats.arm("upsell").reward_sum) == (1, 1.0)
    (letter,) = await read_dead_letters(kafka_bootstrap, names.rewards_dlq)
    assert letter.reason == "reward_out_of_range"
    assert letter.detail == (
        "reward 42.5 is outside [0, 1] for a binary experiment (reward_type=binary)"
    )
    assert letter.value == amount

"""The SDK against the real decider (served ASGI app on the real Kafka + Redis): every
call it offers reaches a real route, and every error the routes give comes back typed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from mab_client import (
    AsyncMabClient,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RequestValidationError,
    RewardItem,
)
from schemas.events import RewardObserved
from schemas.topics import TopicNames
from services.decider.app import create_asgi
from tests.integration.conftest import SettingsFactory
from tests.integration.test_decider import _consume

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def mab(decider_settings: SettingsFactory) -> AsyncIterator[AsyncMabClient]:
    """The served decider and an SDK client talking to it in process."""
    asgi = create_asgi(decider_settings())
    async with (
        asgi.api.router.lifespan_context(asgi.api),
        AsyncMabClient(
            "http://decider", transport=httpx.ASGITransport(app=asgi), timeout=30
        ) as sdk,
    ):
        yield sdk


async def test_every_sdk_call_against_the_real_decider(
    mab: AsyncMabClient, ns: str, kafka_bootstrap: str
) -> None:
    exp = f"{ns}sdk"
    assert await mab.health()
    assert (await mab.ready()).status == "ready"

    created = await mab.create_experiment(exp, ["a", "b"], strategy="thompson")
    assert (created.arm_ids, created.version) == (["a", "b"], 1)
    with pytest.raises(ConflictError):
        await mab.create_experiment(exp, ["a", "b"])
    assert (await mab.add_arms(exp, ["c"])).arm_ids == ["a", "b", "c"]
    assert (await mab.set_strategy(exp, "ucb1")).strategy == "ucb1"
    assert (await mab.get_experiment(exp)).version == 3
    assert exp in {e.experiment_id for e in await mab.list_experiments(limit=1000)}

    decision = await mab.decide(exp)
    assert decision.arm_id in {"a", "b", "c"}
    assert 0 < decision.propensity <= 1
    receipt = await mab.reward_for(decision, 1.0)
    assert receipt.arm_id == decision.arm_id

    # The reward event carries the decision id and the event id the SDK generated.
    (event,) = await _consume(kafka_bootstrap, TopicNames.with_prefix(ns).rewards, exp, want=1)
    assert isinstance(event, RewardObserved)
    assert event.decision_id == decision.decision_id
    assert event.event_id == receipt.event_id

    stats = await mab.stats(exp)
    assert [a.arm_id for a in stats.arms] == ["a", "b", "c"]
    assert stats.strategy == "ucb1"
    series = await mab.timeseries(exp, bucket="minute")
    assert series.arm_ids == ["a", "b", "c"]

    with pytest.raises(NotFoundError):
        await mab.stats(f"{ns}missing")
    wrong_arm = next(a for a in ("a", "b", "c") if a != decision.arm_id)
    with pytest.raises(RequestValidationError, match="served arm"):
        await mab.reward(exp, wrong_arm, 1.0, decision_id=decision.decision_id)
    # What only the server knows is the server's 422; what the API's models refuse is
    # refused by the SDK before sending, with the same field named.
    with pytest.raises(RequestValidationError) as info:
        await mab.set_strategy(exp, "softmax")
    assert info.value.errors[0]["loc"][:2] == ["body", "strategy"]
    with pytest.raises(InvalidRequestError) as refused:
        await mab.reward(exp, "a", 2e6)  # above REWARD_CEILING: no experiment takes it
    assert refused.value.errors[0]["loc"] == ["reward"]
    with pytest.raises(RequestValidationError) as binary:
        await mab.reward(exp, "a", 2.0)  # an amount: the experiment is binary
    assert "reward_type=binary" in str(binary.value)


async def test_bulk_rewards_against_the_real_decider(mab: AsyncMabClient, ns: str) -> None:
    exp = f"{ns}bulk"
    await mab.create_experiment(exp, ["a", "b"])
    good = [RewardItem(experiment_id=exp, arm_id=a, reward=1.0) for a in ("a", "b")]
    assert await mab.bulk_rewards(good) == 2
    with pytest.raises(RequestValidationError) as info:
        await mab.bulk_rewards([*good, RewardItem(experiment_id=exp, arm_id="zz", reward=1.0)])
    assert info.value.errors

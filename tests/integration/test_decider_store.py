"""The command scripts keep the assignment and reward settings of a stored config (real
Redis).

Add-arms and ``/config`` rebuild the config JSON inside Redis from the stored text; a
setting they dropped would silently change an experiment (a lost salt re-hashes every
unit). Configs stored before the settings existed must stay without them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from bandit_core.strategies import EpsilonGreedy
from schemas.events import ExperimentConfig, RewardType
from schemas.redis_keys import RedisKeys
from tests.integration.conftest import SettingsFactory, serve_decider

pytestmark = pytest.mark.integration

SETTINGS: dict[str, Any] = {
    "assignment": "consistent",
    "sticky_ttl_s": None,
    "unit_id_storage": "raw",
    "salt": "0123456789abcdef",
    "min_arm_share": 0.125,
    "allocation_interval_s": 300,
}
#: The reward settings of a continuous experiment (a cap whose text must survive Lua).
REWARD_SETTINGS: dict[str, Any] = {"reward_type": "continuous", "reward_cap": 1234.5678901234567}
#: Guardrail settings whose stored text must survive the config scripts byte for byte (a
#: bound with 17 significant digits).
GUARDRAIL_SETTINGS: dict[str, Any] = {
    "metrics": [{"name": "refund", "min": 0.0, "max": 0.12345678901234568}],
    "guardrails": [
        {
            "metric": "refund",
            "direction": "increase_is_bad",
            "max_relative_change": 0.1,
            "max_absolute_change": None,
            "min_samples": 7,
            "action": "alert",
        }
    ],
    "control_arm_id": "x",
    "guardrail_alpha": 0.01,
}

#: A control arm id with JSON-significant characters, a loss with 17 significant digits.
HOLDOUT_SETTINGS: dict[str, Any] = {
    "control_arm_id": 'ctl, "a", {b}',
    "holdout_share": 0.25,
    "stop_probability": 0.975,
    "stop_expected_loss": 0.0012345678901234567,
    "route_to_winner": True,
}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _raw(redis: Redis, key: str) -> bytes:
    raw = await redis.get(key)
    assert isinstance(raw, bytes)
    return raw


async def _stored(redis: Redis, key: str) -> dict[str, Any]:
    raw = await redis.get(key)
    assert raw is not None
    return dict(orjson.loads(raw))


async def test_commands_keep_the_assignment_settings(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: a config with every assignment setting set (as a later /config writes
    them). We expect add-arms and a strategy change to keep each one, exactly."""
    exp = f"{ns}a,b}}"  # a comma and a brace: the Lua side must not split on them
    key = RedisKeys(ns).experiment(exp).config
    async with serve_decider(decider_settings()) as (c, _):
        r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["x", "y"]})
        assert r.status_code == 201, r.text
        created = await _stored(redis, key)
        assert len(created["salt"]) == 16
        await redis.set(key, orjson.dumps({**created, **SETTINGS}))

        r = await c.post(f"/experiments/{exp.replace('}', '%7D')}/arms", json={"arm_ids": ["z"]})
        assert r.status_code == 200, r.text
        after_arms = await _stored(redis, key)
        assert after_arms["arm_ids"] == ["x", "y", "z"]
        assert {k: after_arms[k] for k in SETTINGS} == SETTINGS
        assert list(after_arms) == list(ExperimentConfig.model_fields)  # the model's order

        r = await c.post("/config", json={"experiment_id": exp, "strategy": "ucb1"})
        assert r.status_code == 200, r.text
        after_config = ExperimentConfig.model_validate(await _stored(redis, key))
        assert after_config.strategy == "ucb1"
        assert {k: getattr(after_config, k) for k in SETTINGS} == SETTINGS


async def test_a_config_stored_before_the_settings_keeps_reading_as_before(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: a config stored without any assignment setting. We expect add-arms to
    add none (it still reads with the defaults and its experiment id as salt)."""
    exp = f"{ns}legacy"
    key = RedisKeys(ns).experiment(exp).config
    async with serve_decider(decider_settings()) as (c, _):
        r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["x", "y"]})
        assert r.status_code == 201, r.text
        newer = {*SETTINGS, *REWARD_SETTINGS, *GUARDRAIL_SETTINGS, *HOLDOUT_SETTINGS}
        old = {k: v for k, v in (await _stored(redis, key)).items() if k not in newer}
        await redis.set(key, orjson.dumps(old))
        r = await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["z"]})
        assert r.status_code == 200, r.text
        stored = await _stored(redis, key)
        assert not newer & set(stored)
        assert ExperimentConfig.model_validate(stored).salt == exp
        assert ExperimentConfig.model_validate(stored).reward_type == "binary"
        r = await c.post("/config", json={"experiment_id": exp, "strategy": "ucb1"})
        assert r.status_code == 200, r.text
        assert not newer & set(await _stored(redis, key))


async def _create_epsilon_greedy(c: httpx.AsyncClient, exp: str, settings: dict[str, Any]) -> None:
    """Create ``exp`` (arms x, y; epsilon_greedy) with ``settings``; 201 expected."""
    body = {"experiment_id": exp, "arm_ids": ["x", "y"], "strategy": "epsilon_greedy"}
    r = await c.post("/experiments", json={**body, **settings})
    assert r.status_code == 201, r.text


async def _add_arm_and_change_strategy(
    c: httpx.AsyncClient, exp: str, change: dict[str, Any]
) -> None:
    """The two commands whose Lua scripts rewrite a stored config from its text: arm
    ``z`` added, then ``/config`` with ``change`` (a strategy and its params)."""
    r = await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["z"]})
    assert r.status_code == 200, r.text
    r = await c.post("/config", json={"experiment_id": exp, **change})
    assert r.status_code == 200, r.text


async def _each_refused_on_config(
    c: httpx.AsyncClient, redis: Redis, key: str, swap: dict[str, Any], settings: dict[str, Any]
) -> None:
    """Each of ``settings`` sent with the ``/config`` body ``swap`` is a 422 naming it
    (fixed at creation), and the stored config stays as it was."""
    before = await redis.get(key)
    for name, value in settings.items():
        r = await c.post("/config", json={**swap, name: value})
        assert r.status_code == 422, r.text
        assert f"{name} cannot change after creation" in r.text
    assert await redis.get(key) == before


async def test_commands_keep_the_reward_settings_and_check_the_strategy(
    decider_settings: SettingsFactory, ns: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: a continuous experiment with a cap whose stored text has 17 significant
    digits. We expect add-arms and a strategy change to keep both settings byte for byte,
    a strategy that learns from binary rewards only refused (422, config unchanged), and
    the reward settings refused on /config (fixed at creation)."""
    both: frozenset[RewardType] = frozenset({"binary", "continuous"})
    monkeypatch.setattr(EpsilonGreedy, "reward_types", both)
    exp = f"{ns}amounts"
    key = RedisKeys(ns).experiment(exp).config
    async with serve_decider(decider_settings()) as (c, _):
        await _create_epsilon_greedy(c, exp, REWARD_SETTINGS)
        assert b'"reward_cap":1234.5678901234567,' in await _raw(redis, key)
        await _add_arm_and_change_strategy(c, exp, {"strategy": "epsilon_greedy"})
        stored = await _stored(redis, key)
        assert {k: stored[k] for k in REWARD_SETTINGS} == REWARD_SETTINGS
        assert b'"reward_cap":1234.5678901234567,' in await _raw(redis, key)
        before = await redis.get(key)
        r = await c.post("/config", json={"experiment_id": exp, "strategy": "thompson"})
        assert r.status_code == 422, r.text
        assert "strategy 'thompson' learns from binary rewards" in r.json()["detail"]
        assert await redis.get(key) == before
        swap = {"experiment_id": exp, "strategy": "epsilon_greedy"}
        await _each_refused_on_config(c, redis, key, swap, REWARD_SETTINGS)


async def test_commands_keep_the_guardrail_settings_byte_for_byte(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: an experiment with metrics and a guardrail, then add-arms and a
    strategy swap with new params. We expect the guardrail settings' stored text kept
    byte for byte and each setting refused on /config (fixed at creation), the config
    unchanged."""
    exp = f"{ns}guarded"
    key = RedisKeys(ns).experiment(exp).config
    async with serve_decider(decider_settings()) as (c, _):
        await _create_epsilon_greedy(c, exp, GUARDRAIL_SETTINGS)
        raw = await _raw(redis, key)
        tail = raw[raw.rindex(b',"metrics":') :]
        swap = {"experiment_id": exp, "strategy": "epsilon_greedy"}
        await _add_arm_and_change_strategy(c, exp, {**swap, "strategy_params": {"epsilon": 0.2}})
        raw = await _raw(redis, key)
        assert raw.endswith(tail)
        stored = await _stored(redis, key)
        assert {k: stored[k] for k in GUARDRAIL_SETTINGS} == GUARDRAIL_SETTINGS
        assert ExperimentConfig.model_validate(stored).arm_ids == ("x", "y", "z")
        await _each_refused_on_config(c, redis, key, swap, GUARDRAIL_SETTINGS)


async def test_commands_keep_the_holdout_settings(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: an experiment with a holdout on a control arm whose id holds a comma,
    quotes and braces, and a loss threshold of 17 significant digits. We expect add-arms
    and a strategy change to keep every holdout and stopping setting (the Lua scripts
    rewrite the config from its stored text), in the model's field order."""
    exp = f"{ns}held"
    key = RedisKeys(ns).experiment(exp).config
    arms = [HOLDOUT_SETTINGS["control_arm_id"], "y"]
    async with serve_decider(decider_settings()) as (c, _):
        r = await c.post(
            "/experiments", json={"experiment_id": exp, "arm_ids": arms, **HOLDOUT_SETTINGS}
        )
        assert r.status_code == 201, r.text
        await _add_arm_and_change_strategy(c, exp, {"strategy": "ucb1"})
        stored = await _stored(redis, key)
        assert {k: stored[k] for k in HOLDOUT_SETTINGS} == HOLDOUT_SETTINGS
        assert list(stored) == list(ExperimentConfig.model_fields)
        assert b'"stop_expected_loss":0.0012345678901234567,' in await _raw(redis, key)
        assert ExperimentConfig.model_validate(stored).version == 3


async def test_adding_arms_beyond_the_floor_is_refused_and_stores_nothing(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: ``min_arm_share`` 0.3 on 3 arms. We expect a 4th arm to be a 422 (4 x 0.3
    > 1) naming the floor, the stored config unchanged, and a floor that fits to pass."""
    exp = f"{ns}floor"
    key = RedisKeys(ns).experiment(exp).config
    async with serve_decider(decider_settings()) as (c, _):
        r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["x", "y", "z"]})
        assert r.status_code == 201, r.text
        await redis.set(key, orjson.dumps({**await _stored(redis, key), "min_arm_share": 0.3}))
        before = await redis.get(key)
        r = await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["w"]})
        assert r.status_code == 422, r.text
        assert "min_arm_share 0.3" in r.json()["detail"]
        assert await redis.get(key) == before
        await redis.set(key, orjson.dumps({**await _stored(redis, key), "min_arm_share": 0.25}))
        r = await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["w"]})
        assert r.status_code == 200, r.text
        assert (await _stored(redis, key))["min_arm_share"] == 0.25

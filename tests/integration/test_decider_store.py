"""The command scripts keep the assignment settings of a stored config (real Redis).

Add-arms and ``/config`` rebuild the config JSON inside Redis from the stored text; a
setting they dropped would silently change an experiment (a lost salt re-hashes every
unit). Configs stored before the settings existed must stay without them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from schemas.events import ExperimentConfig
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


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


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
        assert list(after_arms)[-len(SETTINGS) :] == list(SETTINGS)  # the model's order

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
        old = {k: v for k, v in (await _stored(redis, key)).items() if k not in SETTINGS}
        await redis.set(key, orjson.dumps(old))
        r = await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["z"]})
        assert r.status_code == 200, r.text
        stored = await _stored(redis, key)
        assert not set(SETTINGS) & set(stored)
        assert ExperimentConfig.model_validate(stored).salt == exp


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

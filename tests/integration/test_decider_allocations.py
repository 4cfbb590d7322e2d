"""The allocation store and ``GET /experiments/{id}/allocation`` on the real Redis.

Two decider apps share one Redis like two workers: Thompson's propensities are Monte
Carlo estimates, different in each worker, so only the store (first writer wins) can
make them serve the same weights for a version. The apps' clocks are pinned to one
instant, so no test straddles an epoch boundary by chance, and moved to roll it over.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from bandit_core.allocation import AllocationRecord
from bandit_core.state import ArmStats, ExperimentState
from mab_client.models import AllocationPublic
from schemas.redis_keys import RedisKeys
from services.decider.hot_path import DecisionFastPath
from services.decider.runtime import Runtime, runtime_of
from tests.integration.conftest import SettingsFactory, serve_decider

pytestmark = pytest.mark.integration

ARMS = ["blue-button", "green-button", "Free Shipping"]
#: 2026-04-14T18:00:00Z: the start of a 60 s epoch, so +59 s is still in it.
T0 = 1_776_189_600.0
RETENTION_S = 7200  # the least allowed: two of the longest epochs


def runtime(app: DecisionFastPath) -> Runtime:
    rt = runtime_of(app.api)
    assert rt is not None
    return rt


def pin_clock(app: DecisionFastPath, at: float) -> None:
    runtime(app).allocations.clock = lambda: at


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def create(c: httpx.AsyncClient, exp: str, **body: Any) -> dict[str, Any]:
    r = await c.post(
        "/experiments",
        json={"experiment_id": exp, "arm_ids": ARMS, "strategy": "thompson", **body},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def seed_snapshot(redis: Redis, ns: str, exp: str) -> None:
    """Rewards folded for every arm (as the reward consumer would store them): close
    means, so Thompson's propensities are a Monte Carlo estimate, not a closed form."""
    state = ExperimentState(experiment_id=exp)
    for i, arm in enumerate(ARMS):
        state.arms[arm] = ArmStats(pulls=40, reward_sum=10.0 + i, reward_sq_sum=10.0 + i)
    await redis.set(RedisKeys(ns).experiment(exp).snapshot, state.snapshot_bytes())


async def allocation(c: httpx.AsyncClient, exp: str, **headers: str) -> httpx.Response:
    return await c.get(f"/experiments/{exp}/allocation", headers=headers)


async def test_two_workers_serve_one_stored_version(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: two decider apps on one Redis, asked at the same instant, in turn and
    concurrently. We expect one version, identical weights and ETag from both, the
    record stored once under the experiment's hash tag with the retention as TTL."""
    exp = f"{ns}Free Shipping"
    settings = decider_settings(allocation_retention_s=RETENTION_S)
    async with serve_decider(settings) as (a, app_a), serve_decider(settings) as (b, app_b):
        await create(a, exp)
        await seed_snapshot(redis, ns, exp)
        runtime(app_a).cache.invalidate(exp)
        pin_clock(app_a, T0 + 1.5)
        pin_clock(app_b, T0 + 2.5)
        ra = await allocation(a, exp)
        rb = await allocation(b, exp)
        assert ra.status_code == rb.status_code == 200, ra.text
        assert ra.content == rb.content
        assert ra.headers["etag"] == rb.headers["etag"]
        body = AllocationPublic.model_validate_json(ra.content)
        assert body.version == int(T0 // 60)
        assert body.valid_until == int(T0) + 60
        assert [arm.arm_id for arm in body.arms] == ARMS
        assert math.isclose(sum(arm.weight for arm in body.arms), 1.0, rel_tol=1e-12)
        assert body.assignment == "sticky"
        assert body.hash.algorithm == "mab-race-sha256-v1"
        assert body.hash.unit_id_storage == "hashed"
        assert len(body.salt) == 16
        assert int(body.salt, 16) >= 0
        assert ra.headers["cache-control"] == "max-age=58"
        assert rb.headers["cache-control"] == "max-age=57"

        # Each worker's own estimate differs; the served weights are the stored ones.
        own_a = runtime(app_a).cache.fresh(exp) or (await runtime(app_a).cache.get(exp))[0]
        own_b = runtime(app_b).cache.fresh(exp) or (await runtime(app_b).cache.get(exp))[0]
        assert own_a is not None
        assert own_b is not None
        assert own_a.propensities != own_b.propensities  # Monte Carlo, per process

        key = RedisKeys(ns).allocation(exp, body.version)
        assert key.startswith(f"{ns}mab:alloc:{{")
        raw = await redis.get(key)
        assert raw is not None
        stored = AllocationRecord.decode(raw)
        assert [arm.weight for arm in body.arms] == list(stored.weights)
        assert 0 < await redis.ttl(key) <= RETENTION_S

        # A new epoch asked by both at once: still one version.
        pin_clock(app_a, T0 + 600.0)
        pin_clock(app_b, T0 + 600.0)
        ra, rb = await asyncio.gather(allocation(a, exp), allocation(b, exp))
        assert ra.content == rb.content
        assert AllocationPublic.model_validate_json(ra.content).version == int(T0 // 60) + 10


async def test_if_none_match_is_a_304_until_the_epoch_rolls_over(
    decider_settings: SettingsFactory, ns: str
) -> None:
    """Scenario: a client polls with the ETag it has. We expect 304 without a body (with
    the tag and max-age) while the version holds, 200 for another tag, and at the next
    epoch a new version and tag, while the old version stays readable."""
    exp = f"{ns}cta-button-test"
    async with serve_decider(decider_settings()) as (c, app):
        await create(c, exp)
        pin_clock(app, T0 + 10.0)
        first = await allocation(c, exp)
        assert first.status_code == 200
        etag = first.headers["etag"]
        version = AllocationPublic.model_validate_json(first.content).version
        assert etag.startswith(f'"{version}-')

        pin_clock(app, T0 + 59.5)
        same = await allocation(c, exp, **{"If-None-Match": etag})
        assert same.status_code == 304
        assert same.content == b""
        assert same.headers["etag"] == etag
        assert same.headers["cache-control"] == "max-age=0"
        for header in (f"W/{etag}", f'"other", {etag}', "*"):
            assert (await allocation(c, exp, **{"If-None-Match": header})).status_code == 304
        other = await allocation(c, exp, **{"If-None-Match": '"1-0000000000000000"'})
        assert other.status_code == 200
        assert other.content == first.content

        pin_clock(app, T0 + 60.0)
        rolled = await allocation(c, exp, **{"If-None-Match": etag})
        assert rolled.status_code == 200
        new = AllocationPublic.model_validate_json(rolled.content)
        assert new.version == version + 1
        assert new.valid_until == int(T0) + 120
        assert rolled.headers["etag"] != etag
        assert rolled.headers["cache-control"] == "max-age=60"
        old = await runtime(app).allocations.get(exp, version)
        assert old is not None
        assert list(old.weights) == [arm["weight"] for arm in orjson.loads(first.content)["arms"]]
        assert await runtime(app).allocations.get(exp, version + 5) is None


async def test_the_floor_of_a_stored_config_is_in_the_weights(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: the experiment's config sets ``min_arm_share`` 0.3 on 3 arms (written as
    a later ``/config`` will write it). We expect every weight >= 0.3, summing to 1."""
    exp = f"{ns}floored"
    async with serve_decider(decider_settings()) as (c, app):
        await create(c, exp)
        key = RedisKeys(ns).experiment(exp).config
        raw = await redis.get(key)
        assert raw is not None
        config = orjson.loads(raw)
        await redis.set(key, orjson.dumps({**config, "min_arm_share": 0.3}))
        runtime(app).cache.invalidate(exp)
        pin_clock(app, T0)
        body = AllocationPublic.model_validate_json((await allocation(c, exp)).content)
        assert body.min_arm_share == 0.3
        assert all(arm.weight >= 0.3 - 1e-12 for arm in body.arms)
        assert math.isclose(sum(arm.weight for arm in body.arms), 1.0, rel_tol=1e-12)


async def test_unknown_experiments_are_404(client: httpx.AsyncClient, ns: str) -> None:
    r = await client.get(f"/experiments/{ns}nope/allocation")
    assert r.status_code == 404
    assert r.json() == {"detail": f"experiment '{ns}nope' not found"}


CLIENT_KEY = "client-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


async def test_the_allocation_needs_the_access_of_a_decision(
    decider_settings: SettingsFactory, ns: str
) -> None:
    """Scenario: client and read keys are configured. We expect what GET /decision
    answers: no key 401, a read key 403, a client key or the admin key 200."""
    exp = f"{ns}keyed"
    settings = decider_settings(admin_key=ADMIN_KEY, client_keys=CLIENT_KEY, read_keys=READ_KEY)
    async with serve_decider(settings) as (c, _):
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = await c.post(
            "/experiments", json={"experiment_id": exp, "arm_ids": ARMS}, headers=admin
        )
        assert r.status_code == 201, r.text
        path = f"/experiments/{exp}/allocation"
        for headers, status in (
            ({}, 401),
            ({"Authorization": f"Bearer {READ_KEY}"}, 403),
            ({"Authorization": f"Bearer {CLIENT_KEY}"}, 200),
            (admin, 200),
        ):
            decision = await c.get("/decision", params={"experiment_id": exp}, headers=headers)
            r = await c.get(path, headers=headers)
            assert (r.status_code, decision.status_code) == (status, status), r.text

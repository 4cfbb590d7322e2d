"""``GET /decision`` with a unit id, the assignment settings, rewards by unit (real Kafka
and Redis, deciders served in process).

Two decider apps on one Redis stand for two workers: the sticky table must give a new
unit one arm however the first requests race, and each worker's memory must never
disagree with Redis.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from deploy.stack.ports import free_port
from mab_client.assignment import unit_token
from mab_client.models import DecisionPublic
from schemas.redis_keys import RedisKeys
from services.decider.hot_path import DecisionFastPath
from services.decider.runtime import Runtime, runtime_of
from services.decider.units import StickyWrites
from tests.fixtures.faults import read_topics
from tests.integration.conftest import SettingsFactory, both_paths, serve_decider

pytestmark = pytest.mark.integration

ARMS = ["blue", "green", "Free Shipping"]


def runtime(app: DecisionFastPath) -> Runtime:
    rt = runtime_of(app.api)
    assert rt is not None
    return rt


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def create(c: httpx.AsyncClient, exp: str, **body: Any) -> httpx.Response:
    return await c.post(
        "/experiments",
        json={"experiment_id": exp, "arm_ids": ARMS, "strategy": "thompson", **body},
    )


async def decide(c: httpx.AsyncClient, query: str) -> DecisionPublic:
    r = await c.get(f"/decision?{query}")
    assert r.status_code == 200, r.text
    return DecisionPublic.model_validate_json(r.content)


def decisions_of(kafka_bootstrap: str, rt: Runtime, exp: str) -> list[dict[str, Any]]:
    out = []
    for landed in read_topics(kafka_bootstrap, [rt.topics.decisions]):
        assert landed.value is not None
        record = orjson.loads(landed.value)
        if record["experiment_id"] == exp:
            out.append(record)
    return out


async def test_settings_on_create_config_and_get(client: httpx.AsyncClient, ns: str) -> None:
    """Scenario: an experiment created with every assignment setting, then changed by
    /config. We expect them in GET /experiments/{id} (not in the create and /config
    answers, which keep the original API's shape), absent fields unchanged, and clear
    422s for values out of bounds and for the settings fixed at creation."""
    exp = f"{ns}settings"
    r = await create(
        client,
        exp,
        assignment="consistent",
        sticky_ttl_s=3600,
        unit_id_storage="raw",
        min_arm_share=0.1,
        allocation_interval_s=30,
    )
    assert r.status_code == 201, r.text
    assert "units" not in r.json()
    units = (await client.get(f"/experiments/{exp}")).json()["units"]
    assert units["assignment"] == "consistent"
    assert units["sticky_ttl_s"] == 3600
    assert units["unit_id_storage"] == "raw"
    assert units["min_arm_share"] == 0.1
    assert units["allocation_interval_s"] == 30
    salt = units["salt"]
    assert len(salt) == 16

    r = await client.post(
        "/config",
        json={"experiment_id": exp, "strategy": "thompson", "sticky_ttl_s": None},
    )
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"experiment_id", "strategy", "strategy_params", "version"}
    after = (await client.get(f"/experiments/{exp}")).json()["units"]
    assert after == {**units, "sticky_ttl_s": None}
    r = await client.post(
        "/config",
        json={
            "experiment_id": exp,
            "strategy": "thompson",
            "assignment": "sticky",
            "min_arm_share": 0.3,
            "allocation_interval_s": 3600,
        },
    )
    assert r.status_code == 200, r.text
    after = (await client.get(f"/experiments/{exp}")).json()["units"]
    assert after == {
        **units,
        "sticky_ttl_s": None,
        "assignment": "sticky",
        "min_arm_share": 0.3,
        "allocation_interval_s": 3600,
    }

    bad_config: list[tuple[dict[str, Any], str]] = [
        ({"unit_id_storage": "hashed"}, "unit_id_storage cannot change after creation"),
        ({"salt": "abc"}, "salt cannot change after creation"),
        ({"min_arm_share": 0.5}, "must be at most 1"),
        ({"assignment": "sometimes"}, "assignment"),
        ({"sticky_ttl_s": 0}, "sticky_ttl_s"),
        ({"allocation_interval_s": 4}, "allocation_interval_s"),
    ]
    for extra, needle in bad_config:
        r = await client.post(
            "/config", json={"experiment_id": exp, "strategy": "thompson", **extra}
        )
        assert r.status_code == 422, (extra, r.text)
        assert needle in r.text, (extra, r.text)
    assert (await client.get(f"/experiments/{exp}")).json()["units"] == after

    bad_create: list[tuple[dict[str, Any], str]] = [
        ({"min_arm_share": 0.34}, "at most 0.333333 with 3 arms"),
        ({"sticky_ttl_s": 366 * 86400}, "sticky_ttl_s"),
        ({"unit_id_storage": "plain"}, "unit_id_storage"),
        ({"allocation_interval_s": 3601}, "allocation_interval_s"),
        ({"salt": "mine"}, "salt"),
    ]
    for i, (extra, needle) in enumerate(bad_create):
        r = await create(client, f"{ns}bad-{i}", **extra)
        assert r.status_code == 422, (extra, r.text)
        assert needle in r.text, (extra, r.text)
        assert (await client.get(f"/experiments/{ns}bad-{i}")).status_code == 404


async def test_unit_id_is_validated_on_both_paths(
    decider_settings: SettingsFactory, ns: str
) -> None:
    """Scenario: unit ids that are empty, too long or not printable, on the hot path and
    the route. We expect a 422 naming unit_id on both, and a trimmed id echoed."""
    exp = f"{ns}validate"
    async with both_paths(decider_settings()) as (served, routes):
        assert (await create(served, exp)).status_code == 201
        for c in (served, routes):
            for bad in ["", "   ", "x" * 201, "a\tb", "a\u200bb"]:
                r = await c.get("/decision", params={"experiment_id": exp, "unit_id": bad})
                assert r.status_code == 422, (bad, r.text)
                assert "unit_id" in r.text
            d = await decide(c, f"unit_id=+v%C3%A91+&experiment_id={exp}")
            assert d.unit_id == "vé1"
            assert d.assignment == "sticky"
            d2 = await decide(c, f"experiment_id={exp}&unit_id=v%C3%A91")
            assert (d2.arm_id, d2.decision_id, d2.propensity) == (
                d.arm_id,
                d.decision_id,
                d.propensity,
            )
            plain = await c.get("/decision", params={"experiment_id": exp})
            assert "unit_id" not in plain.json()
            assert "assignment" not in plain.json()


async def test_sticky_units_race_on_two_workers(
    decider_settings: SettingsFactory, ns: str, redis: Redis, kafka_bootstrap: str
) -> None:
    """Scenario: two decider apps on one Redis; 300 new units, each asked for by both
    workers 4 times at once, then again after the allocation's weights were changed by
    a new epoch. We expect one arm, decision id and propensity per unit everywhere,
    exactly one DecisionMade per unit (sticky, with its token and allocation version),
    and the sticky key with the TTL under the experiment's hash tag."""
    exp = f"{ns}sticky race"
    settings = decider_settings()
    units = [f"visitor-{i}" for i in range(300)]
    async with serve_decider(settings) as (a, app_a), serve_decider(settings) as (b, app_b):
        assert (await create(a, exp, sticky_ttl_s=600)).status_code == 201
        salt = (await a.get(f"/experiments/{exp}")).json()["units"]["salt"]

        async def first_requests(unit: str) -> list[DecisionPublic]:
            q = f"experiment_id={exp.replace(' ', '+')}&unit_id={unit}"
            return list(await asyncio.gather(*[decide(c, q) for c in (a, b) for _ in range(4)]))

        async def in_waves(group: list[str]) -> list[list[DecisionPublic]]:
            """Units 25 at a time (200 requests in flight: one Redis connection each)."""
            out: list[list[DecisionPublic]] = []
            for lo in range(0, len(group), 25):
                out += await asyncio.gather(*[first_requests(u) for u in group[lo : lo + 25]])
            return out

        seen = await in_waves(units)
        for unit, answers in zip(units, seen, strict=True):
            assert len({(d.arm_id, d.decision_id, d.propensity) for d in answers}) == 1, unit
        # A later epoch (other weights are possible) changes no unit's arm.
        for app in (app_a, app_b):
            runtime(app).allocations.clock = lambda: 4_000_000_000.0
        again = await in_waves(units)
        for before, after in zip(seen, again, strict=True):
            assert {d.decision_id for d in after} == {before[0].decision_id}
        token = unit_token(units[0], salt)
        key = RedisKeys(ns).unit(exp, token)
        assert key.startswith(f"{ns}mab:unit:{{")
        assert 0 < await redis.ttl(key) <= 600
        rt = runtime(app_a)
        arms = Counter(d[0].arm_id for d in seen)
    logged = decisions_of(kafka_bootstrap, rt, exp)
    assert len(logged) == len(units)
    by_token = {r["unit_id"]: r for r in logged}
    assert len(by_token) == len(units)
    for unit, answers in zip(units, seen, strict=True):
        record = by_token[unit_token(unit, salt)]
        assert record["decision_id"] == answers[0].decision_id
        assert record["arm_id"] == answers[0].arm_id
        assert record["propensity"] == answers[0].propensity
        assert record["assignment"] == "sticky"
        assert isinstance(record["allocation_version"], int)
    # New units follow the allocation: with a fresh experiment (uniform posteriors)
    # every arm gets some of 300 units.
    assert len(arms) == len(ARMS)


async def test_consistent_units_log_every_request(
    client: httpx.AsyncClient, ns: str, kafka_bootstrap: str, decider_settings: SettingsFactory
) -> None:
    """Scenario: a consistent experiment with raw unit ids, each unit asked twice. We
    expect the same decision id per unit within the epoch, one DecisionMade per request
    carrying the raw id as its token, and the propensity equal to the arm's weight."""
    exp = f"{ns}consistent"
    async with serve_decider(decider_settings()) as (c, app):
        r = await create(c, exp, assignment="consistent", unit_id_storage="raw")
        assert r.status_code == 201, r.text
        alloc = (await c.get(f"/experiments/{exp}/allocation")).json()
        weights = {a["arm_id"]: a["weight"] for a in alloc["arms"]}
        answers = [await decide(c, f"experiment_id={exp}&unit_id=u{i % 50}") for i in range(100)]
        rt = runtime(app)
    for first, second in zip(answers[:50], answers[50:], strict=True):
        assert first.decision_id == second.decision_id
        assert first.propensity == weights[first.arm_id]
        assert first.assignment == "consistent"
    logged = decisions_of(kafka_bootstrap, rt, exp)
    assert len(logged) == 100
    assert {r["unit_id"] for r in logged} == {f"u{i}" for i in range(50)}
    assert {r["assignment"] for r in logged} == {"consistent"}
    assert {r["allocation_version"] for r in logged} == {alloc["version"]}


async def test_per_request_units_draw_afresh(
    decider_settings: SettingsFactory, ns: str, kafka_bootstrap: str
) -> None:
    """Scenario: a per_request experiment asked 60 times for one unit. We expect a new
    decision id each time, the hashed token on every event and no assignment field."""
    exp = f"{ns}per-request"
    async with serve_decider(decider_settings()) as (c, app):
        assert (await create(c, exp, assignment="per_request")).status_code == 201
        salt = (await c.get(f"/experiments/{exp}")).json()["units"]["salt"]
        answers = [await decide(c, f"experiment_id={exp}&unit_id=shopper") for _ in range(60)]
        rt = runtime(app)
    assert len({d.decision_id for d in answers}) == 60
    assert {d.assignment for d in answers} == {"per_request"}
    logged = decisions_of(kafka_bootstrap, rt, exp)
    assert len(logged) == 60
    assert {r["unit_id"] for r in logged} == {unit_token("shopper", salt)}
    assert all("assignment" not in r and "allocation_version" not in r for r in logged)


async def test_rewards_by_unit(
    decider_settings: SettingsFactory, ns: str, kafka_bootstrap: str
) -> None:
    """Scenario: rewards carrying unit_id and no decision_id, on POST /reward (hot path and
    route) and POST /rewards, for a sticky and a consistent experiment. We expect them
    attributed to the unit's current decision id with the unit's token; a unit never
    decided is a 422 no_assignment, another arm a 422 arm_mismatch naming the unit's arm,
    and a batch with one bad item logs nothing."""
    sticky, consistent = f"{ns}reward-sticky", f"{ns}reward-consistent"
    async with (
        serve_decider(decider_settings()) as (served, app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app.api), base_url="http://decider"
        ) as routes,
    ):
        assert (await create(served, sticky)).status_code == 201
        r = await create(served, consistent, assignment="consistent")
        assert r.status_code == 201
        salts = {
            exp: (await served.get(f"/experiments/{exp}")).json()["units"]["salt"]
            for exp in (sticky, consistent)
        }
        decided = {
            exp: await decide(served, f"experiment_id={exp}&unit_id=buyer-1")
            for exp in (sticky, consistent)
        }
        for exp, c in ((sticky, served), (consistent, routes)):
            d = decided[exp]
            ok = {"experiment_id": exp, "arm_id": d.arm_id, "reward": 1.0, "unit_id": "buyer-1"}
            r = await c.post("/reward", json=ok)
            assert r.status_code == 200, r.text
            other = next(a for a in ARMS if a != d.arm_id)
            r = await c.post("/reward", json={**ok, "arm_id": other})
            assert r.status_code == 422
            assert f"assigned arm {d.arm_id!r}" in r.json()["detail"]
            r = await c.post("/reward", json={**ok, "unit_id": "never-seen"})
            if exp == sticky:
                assert r.status_code == 422
                assert "no current assignment" in r.json()["detail"]
            else:  # a consistent unit always has the rule's arm; this one may differ
                assert r.status_code in (200, 422), r.text
        r = await served.post(
            "/rewards",
            json={
                "rewards": [
                    {"experiment_id": sticky, "arm_id": ARMS[0], "reward": 0, "unit_id": "b1"},
                    {
                        "experiment_id": sticky,
                        "arm_id": decided[sticky].arm_id,
                        "reward": 0,
                        "unit_id": "buyer-1",
                    },
                ]
            },
        )
        assert r.status_code == 422
        assert [e["type"] for e in r.json()["detail"]] == ["no_assignment"]
        rt = runtime(app)
    rewards = [
        orjson.loads(landed.value or b"{}")
        for landed in read_topics(kafka_bootstrap, [rt.topics.rewards])
    ]
    for exp in (sticky, consistent):
        # Not the never-seen unit's: in consistent mode its reward is accepted when the
        # rule happens to give it the same arm (one salt in three).
        stranger = unit_token("never-seen", salts[exp])
        mine = [
            x
            for x in rewards
            if x["experiment_id"] == exp and x["reward"] == 1.0 and x.get("unit_id") != stranger
        ]
        assert len(mine) == 1
        assert mine[0]["decision_id"] == decided[exp].decision_id
        assert mine[0]["unit_id"] == unit_token("buyer-1", salts[exp])
    assert not [x for x in rewards if x["experiment_id"] == sticky and x["reward"] == 0]


async def test_new_unit_writes_of_one_iteration_share_one_call(ns: str, redis: Redis) -> None:
    """Scenario: 40 new units of one experiment asked for in one event-loop iteration,
    one of them by five requests at once, with at most 16 keys a call. We expect three
    script calls, each key stored once with its TTL, the first caller of a key told its
    value was stored and the later ones given that value (as their own SET NX GET would
    have been), and the same writes again answered with the stored values."""
    keys = RedisKeys(ns)
    writes = StickyWrites(redis, max_batch=16)
    exp = "batch exp"
    units = [keys.unit(exp, f"token-{i}") for i in range(40)]
    firsts = [writes.set_nx_get(exp, k, f"v{i}".encode(), 600) for i, k in enumerate(units)]
    again = [writes.set_nx_get(exp, units[0], b"late", 600) for _ in range(4)]
    assert await asyncio.gather(*firsts) == [None] * 40
    assert await asyncio.gather(*again) == [b"v0"] * 4
    assert writes.batches == 3
    for i, key in enumerate(units):
        assert await redis.get(key) == f"v{i}".encode()
        assert 0 < await redis.ttl(key) <= 600
    repeated = [writes.set_nx_get(exp, k, b"other", 600) for k in units]
    assert await asyncio.gather(*repeated) == [f"v{i}".encode() for i in range(40)]
    assert writes.batches == 6
    forever = keys.unit(exp, "no-ttl")
    assert await writes.set_nx_get(exp, forever, b"kept", None) is None
    assert await redis.ttl(forever) == -1


async def test_a_refused_write_fails_only_its_unit(ns: str, redis: Redis) -> None:
    """Scenario: in one iteration, one experiment's new units, one of whose keys Redis
    refuses (it holds a list), asked for by two requests. We expect both of that unit's
    callers to get the Redis error, and the other unit of the same call to be stored
    and its caller told so (an error there would leave a stored unit never logged)."""
    keys = RedisKeys(ns)
    writes = StickyWrites(redis)
    bad, fine = keys.unit("broken", "a list"), keys.unit("broken", "fine")
    await redis.rpush(bad, b"x")
    outcomes = await asyncio.gather(
        writes.set_nx_get("broken", bad, b"1", 60),
        writes.set_nx_get("broken", fine, b"2", 60),
        writes.set_nx_get("broken", bad, b"3", 60),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], ResponseError), outcomes
    assert isinstance(outcomes[2], ResponseError), outcomes
    assert outcomes[1] is None
    assert await redis.get(fine) == b"2"
    assert writes.batches == 1
    with pytest.raises(ValueError, match="max_batch"):
        StickyWrites(redis, max_batch=0)


async def test_a_failed_call_fails_every_waiter_of_its_batch(ns: str) -> None:
    """Scenario: Redis cannot be reached; three new units of two experiments, one asked
    for twice, in one iteration. We expect every caller to get the connection error
    (none left waiting, none told its unit was stored)."""
    keys = RedisKeys(ns)
    unreachable = Redis(port=free_port(), socket_connect_timeout=1)
    try:
        writes = StickyWrites(unreachable)
        outcomes = await asyncio.gather(
            writes.set_nx_get("a", keys.unit("a", "u1"), b"1", 60),
            writes.set_nx_get("a", keys.unit("a", "u1"), b"2", 60),
            writes.set_nx_get("a", keys.unit("a", "u2"), b"3", 60),
            writes.set_nx_get("b", keys.unit("b", "u3"), b"4", 60),
            return_exceptions=True,
        )
    finally:
        await unreachable.aclose()
    assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes
    assert writes.batches == 2

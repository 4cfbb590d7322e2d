"""Ids of the original API (any printable text, trimmed) and ``user_context``, against the
real Kafka + Redis: the decider in-process, and behind both real HTTP servers.

Storefront teams name experiments and arms ``Free Shipping``, ``10% off`` or ``a:b``;
every place an id becomes part of a name (Redis keys and hash fields, Kafka keys, URL
paths) must keep such ids apart and inside their experiment's hash tag.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from mab_client import AsyncMabClient, NotFoundError
from mab_client.paths import url_segment
from schemas.codec import decode
from schemas.events import DecisionMade, RewardObserved
from schemas.ids import key_segment
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from tests.fixtures.faults import read_topics, service_env, start_decider, wait_ready
from tests.fixtures.ids import STOREFRONT_IDS
from tests.integration.conftest import SettingsFactory, serve_decider

pytestmark = pytest.mark.integration

#: Experiment ids as storefront teams write them (one with every character the earlier
#: charset refused and the key layout gives a meaning to: separator, glob, hash tag).
IDS = [
    *STOREFRONT_IDS,
    "promo/2026|spring",
    "a%3Ab",  # would collide with "a:b" under a naive percent-encoding of ':' only
    "..",
]
ARMS = ["Blue button", "50% off", "{x}:*", "été|d"]


async def test_printable_ids_work_everywhere_and_never_collide(
    decider_settings: SettingsFactory,
    kafka_bootstrap: str,
    ns: str,
    topics: dict[str, int],
    redis: Redis,
) -> None:
    """Scenario: one experiment per id of :data:`IDS`, created with untrimmed ids,
    decided, rewarded (with a ``user_context``) and read back through encoded paths.
    We expect: every call succeeds on its own experiment; the log carries the trimmed
    ids, keyed by their UTF-8 text, and the context; each experiment's Redis keys hold
    exactly its encoded id as their one hash tag."""
    async with serve_decider(decider_settings()) as (c, _):
        for exp in IDS:
            r = await c.post(
                "/experiments",
                json={"experiment_id": f"  {exp}\t", "arm_ids": [f" {a} " for a in ARMS]},
            )
            assert r.status_code == 201, r.text
            assert (r.json()["experiment_id"], r.json()["arm_ids"]) == (exp, ARMS)
        listed = [e["experiment_id"] for e in (await c.get("/experiments")).json()]
        assert listed == IDS

        context = {"segment": "returning", "device": "mobile", "cart": [12.5, None]}
        for exp in IDS:
            got = await c.get(f"/experiments/{url_segment(exp)}")
            assert got.status_code == 200, (exp, got.text)
            assert got.json()["experiment_id"] == exp
            d = (await c.get("/decision", params={"experiment_id": exp})).json()
            assert d["experiment_id"] == exp
            assert d["arm_id"] in ARMS
            r = await c.post(
                "/reward",
                json={
                    "experiment_id": exp,
                    "arm_id": d["arm_id"],
                    "reward": 1.0,
                    "decision_id": d["decision_id"],
                    "user_context": context,
                },
            )
            assert r.status_code == 200, r.text
            stats = await c.get(f"/experiments/{url_segment(exp)}/stats")
            assert stats.status_code == 200, stats.text
            assert [a["arm_id"] for a in stats.json()["arms"]] == ARMS
            series = await c.get(f"/experiments/{url_segment(exp)}/timeseries")
            assert series.status_code == 200, series.text
            assert series.json()["arm_ids"] == ARMS

        # The raw hot path decodes a query like Starlette does: '+' is a space, and the
        # id is trimmed; an encoded '%' and '&' stay part of the id.
        for query, exp in [
            (b"experiment_id=Free+Shipping", "Free Shipping"),
            (b"experiment_id=%20Free%20Shipping%20", "Free Shipping"),
            (b"experiment_id=10%25%20off", "10% off"),
            (b"experiment_id=Livraison+gratuite+%C3%A9t%C3%A9", "Livraison gratuite été"),
        ]:
            r = await c.get("/decision?" + query.decode())
            assert (r.status_code, r.json()["experiment_id"]) == (200, exp), r.text
        assert (await c.get("/decision", params={"experiment_id": "a%3Ab"})).json()[
            "experiment_id"
        ] == "a%3Ab"

    names = TopicNames.with_prefix(ns)
    records = await asyncio.to_thread(
        read_topics, kafka_bootstrap, [names.decisions, names.rewards]
    )
    rewards = [decode(r.value or b"") for r in records if r.topic == names.rewards]
    decisions = [decode(r.value or b"") for r in records if r.topic == names.decisions]
    assert all(isinstance(e, RewardObserved) for e in rewards)
    assert all(isinstance(e, DecisionMade) for e in decisions)
    assert sorted(e.experiment_id for e in rewards) == sorted(IDS)
    assert all(getattr(e, "user_context", None) == context for e in rewards)
    for rec in records:
        assert rec.key == decode(rec.value or b"").experiment_id.encode()

    keys = RedisKeys(ns)
    found = [k.decode() async for k in redis.scan_iter(match=f"{ns}mab:{{*", count=1000)]
    by_experiment: dict[str, set[str]] = {}
    for key in found:
        # One hash tag per key, and it is the experiment's encoded id.
        assert key.count("{") == 1, key
        assert key.count("}") == 1, key
        parts = keys.split(key)
        assert parts is not None, key
        by_experiment.setdefault(parts[0], set()).add(parts[1])
        tag = key[key.index("{") + 1 : key.index("}")]
        assert tag == key_segment(parts[0])
    assert set(by_experiment) == set(IDS)
    assert all("config" in kinds for kinds in by_experiment.values())
    # Decoded configs: each experiment's key holds its own id.
    for exp in IDS:
        raw = await redis.get(keys.experiment(exp).config)
        assert raw is not None
        assert orjson.loads(raw)["experiment_id"] == exp


async def test_ids_of_the_earlier_charset_keep_their_keys(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: an experiment with an id the earlier charset allowed.
    We expect: its keys are spelled exactly as before ids were widened."""
    async with serve_decider(decider_settings()) as (c, _):
        r = await c.post(
            "/experiments", json={"experiment_id": "cta-button.v2_x", "arm_ids": ["a-1", "b_2"]}
        )
        assert r.status_code == 201
    assert await redis.exists(f"{ns}mab:{{cta-button.v2_x}}:config") == 1


async def test_user_context_bounds_are_a_clear_422_and_nothing_is_logged(
    decider_settings: SettingsFactory, kafka_bootstrap: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: rewards whose user_context is too large, has too many keys or is not an
    object, on POST /reward (both the raw hot path and FastAPI) and in a batch.
    We expect: 422 naming the rule (the batch: the failing item's index), nothing logged;
    a context within bounds is accepted in a batch too."""
    exp = "Free Shipping"
    async with serve_decider(decider_settings()) as (c, _):
        assert (
            await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
        ).status_code == 201
        big = {"blob": "x" * 3000}
        many = {f"k{i}": i for i in range(40)}
        for context, words in [(big, "at most 2048"), (many, "at most 32"), ([1], "dictionary")]:
            body = {"experiment_id": exp, "arm_id": "a", "reward": 1, "user_context": context}
            # The raw hot path's content type, and one only FastAPI reads as JSON.
            for kind in ("application/json", "application/vnd.shop+json"):
                r = await c.post(
                    "/reward", content=orjson.dumps(body), headers={"content-type": kind}
                )
                assert r.status_code == 422, r.text
                assert words in r.text
        ok = {"experiment_id": exp, "arm_id": "b", "reward": 0, "user_context": {"seg": "new"}}
        bad = {"experiment_id": exp, "arm_id": "a", "reward": 1, "user_context": big}
        r = await c.post("/rewards", json={"rewards": [ok, bad]})
        assert r.status_code == 422
        assert [e["index"] for e in r.json()["detail"]] == [1]
        r = await c.post("/rewards", json={"rewards": [ok, ok]})
        assert r.status_code == 200, r.text
    names = TopicNames.with_prefix(ns)
    records = await asyncio.to_thread(read_topics, kafka_bootstrap, [names.rewards])
    rewards = [decode(rec.value or b"") for rec in records]
    assert [getattr(e, "user_context", None) for e in rewards] == [{"seg": "new"}] * 2


async def test_arm_count_cap_is_configurable_and_a_clear_422(
    decider_settings: SettingsFactory,
) -> None:
    """Scenario: the default cap (1,000 arms), then a cap of 5 (``MAB_MAX_ARMS``).
    We expect: 1,000 arms are accepted, 1,001 are not; with the cap of 5, a create of 6
    and an add-arms beyond 5 are 422 naming the limit, and nothing changes."""
    async with serve_decider(decider_settings()) as (c, _):
        arms = [f"Product #{i}" for i in range(1000)]
        r = await c.post("/experiments", json={"experiment_id": "catalogue", "arm_ids": arms})
        assert r.status_code == 201, r.text[:300]
        d = await c.get("/decision", params={"experiment_id": "catalogue"})
        assert d.json()["arm_id"] in arms
        assert len(d.json()["metadata"]["arms"]) == 1000
        r = await c.post("/experiments/catalogue/arms", json={"arm_ids": ["one too many"]})
        assert r.status_code == 422
        assert "maximum of 1000 (MAB_MAX_ARMS)" in r.text
        r = await c.post("/experiments", json={"experiment_id": "too-big", "arm_ids": [*arms, "x"]})
        assert r.status_code == 422
        assert "at most 1000 (MAB_MAX_ARMS)" in r.text
    async with serve_decider(decider_settings(max_arms=5)) as (c, _):
        six = ["a", "b", "c", "d", "e", "f"]
        r = await c.post("/experiments", json={"experiment_id": "six", "arm_ids": six})
        assert r.status_code == 422
        r = await c.post("/experiments", json={"experiment_id": "four", "arm_ids": six[:4]})
        assert r.status_code == 201
        r = await c.post("/experiments/four/arms", json={"arm_ids": ["e", "f"]})
        assert r.status_code == 422
        assert "has 4 arms; adding 2 would exceed the maximum of 5" in r.text
        assert (await c.get("/experiments/four")).json()["arm_ids"] == six[:4]
        r = await c.post("/experiments/four/arms", json={"arm_ids": ["e"]})
        assert r.status_code == 200


@pytest.mark.timeout(180)  # two decider processes start on a shared 2-core machine
@pytest.mark.parametrize("server", ["granian", "uvicorn"])
async def test_encoded_paths_route_through_a_real_server(
    kafka_bootstrap: str,
    redis_url: str,
    ns: str,
    topics: dict[str, int],
    tmp_path: Path,
    server: str,
) -> None:
    """Scenario: the decider served by granian (the default) and by uvicorn; the SDK
    sends ids with ``/``, ``%``, ``..`` and accents as one percent-encoded segment.
    We expect: each reaches its own experiment (the servers decode ``%2F`` before the
    app routes; the decider routes on the raw path), and ``a/b`` is not ``a%2Fb``."""
    env = service_env(kafka_bootstrap, redis_url, ns, MAB_HTTP_SERVER=server)
    decider, url = start_decider(env, tmp_path / "decider.log")
    try:
        await wait_ready(decider, url, within=120)
        ids = ["a/b", "a%2Fb", "10% off", "..", ".", "Livraison gratuite été", "?#&="]
        async with AsyncMabClient(url, timeout=10) as mab:
            for exp in ids:
                created = await mab.create_experiment(exp, ["x/y", "x%2Fy"])
                assert created.experiment_id == exp
            for exp in ids:
                assert (await mab.get_experiment(exp)).experiment_id == exp
                grown = await mab.add_arms(exp, ["z"])
                assert grown.arm_ids == ["x/y", "x%2Fy", "z"]
                d = await mab.decide(exp)
                await mab.reward_for(d, 1.0, {"page": "/checkout?step=2"})
                assert (await mab.stats(exp)).experiment_id == exp
                assert (await mab.timeseries(exp)).experiment_id == exp
            with pytest.raises(NotFoundError):
                await mab.get_experiment("a/b/c")
        async with httpx.AsyncClient(base_url=url, timeout=10) as raw:
            # Lower-case escapes reach the same experiment.
            r = await raw.get("/experiments/a%2fb")
            assert r.json()["experiment_id"] == "a/b"
            r = await raw.get("/experiments/10%25%20off/stats")
            assert r.json()["experiment_id"] == "10% off"
            # An unencoded '/' is a path separator: not an experiment, a 404.
            assert (await raw.get("/experiments/a/b/stats")).status_code == 404
            metrics = (await raw.get("/metrics")).text
            assert 'route="/experiments/{experiment_id}/stats"' in metrics
            assert "mab_id" not in metrics
    finally:
        decider.terminate()

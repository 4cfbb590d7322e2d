"""The decider against a real Kafka broker and Redis (in-process ASGI, real I/O).

Each test gets its own topic and key prefix (``ns``), so tests never see each other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from schemas.codec import decode
from schemas.events import DecisionMade, ExperimentCreated, RewardObserved
from schemas.topics import TopicNames
from tests.fixtures.streams import topic_reader
from tests.integration.conftest import SettingsFactory, both_paths

pytestmark = pytest.mark.integration

ARMS = ["blue-button", "green-button", "red-button"]


async def _create(c: httpx.AsyncClient, exp: str, **extra: Any) -> httpx.Response:
    return await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ARMS, **extra})


async def _consume(
    bootstrap: str, topic: str, exp: str, want: int, wait_s: float = 30.0
) -> list[Any]:
    """Every event of ``exp`` in ``topic`` from the beginning, until ``want`` are seen."""
    events: list[Any] = []
    async with topic_reader(bootstrap, topic) as consumer:
        deadline = time.monotonic() + wait_s
        while len(events) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    assert rec.key == exp.encode()
                    event = decode(rec.value)
                    if event.experiment_id == exp:
                        events.append(event)
        # Linger briefly to catch duplicates beyond the expected count.
        for records in (await consumer.getmany(timeout_ms=300)).values():
            events.extend(e for e in (decode(r.value) for r in records) if e.experiment_id == exp)
    return events


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body.pop(k) for k in ("status", "redis", "kafka")} == {
        "status": "ready",
        "redis": "ok",
        "kafka": "ok",
    }
    assert body.pop("auth") == "open"  # the `client` fixture's decider runs keyless
    assert set(body) == {"warning"}


async def test_original_api_workflow(client: httpx.AsyncClient, ns: str) -> None:
    exp = f"{ns}cta-button-test"
    r = await _create(client, exp, strategy="thompson")
    assert r.status_code == 201, r.text
    assert r.json() == {
        "experiment_id": exp,
        "arm_ids": ARMS,
        "strategy": "thompson",
        "strategy_params": {},
        "version": 1,
    }
    assert (await client.get(f"/experiments/{exp}")).json()["arm_ids"] == ARMS
    listed = (await client.get("/experiments")).json()
    assert [e["experiment_id"] for e in listed] == [exp]

    r = await client.get("/decision", params={"experiment_id": exp})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["experiment_id"] == exp
    assert d["arm_id"] in ARMS
    assert d["strategy"] == "thompson"
    assert d["metadata"] == {"arms": ARMS}
    assert d["decision_id"].endswith(f".{ARMS.index(d['arm_id'])}")
    assert d["propensity"] == pytest.approx(1 / 3)

    r = await client.post(
        "/reward", json={"experiment_id": exp, "arm_id": "green-button", "reward": 1.0}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("status", "experiment_id", "arm_id", "strategy")} == {
        "status": "ok",
        "experiment_id": exp,
        "arm_id": "green-button",
        "strategy": "thompson",
    }
    assert body["event_id"]
    r = await client.post(
        "/reward",
        json={
            "experiment_id": exp,
            "arm_id": d["arm_id"],
            "reward": 0.0,
            "decision_id": d["decision_id"],
        },
    )
    assert r.status_code == 200, r.text

    r = await client.post(f"/experiments/{exp}/arms", json={"arm_ids": ["orange-button", "purple"]})
    assert r.status_code == 200, r.text
    assert r.json()["arm_ids"] == [*ARMS, "orange-button", "purple"]
    assert r.json()["version"] == 2
    # The new arm is decidable and rewardable at once (cache invalidated by the command).
    r = await client.post("/reward", json={"experiment_id": exp, "arm_id": "purple", "reward": 1})
    assert r.status_code == 200, r.text
    assert (await client.get("/decision", params={"experiment_id": exp})).json()["metadata"][
        "arms"
    ] == [*ARMS, "orange-button", "purple"]

    r = await client.post("/config", json={"experiment_id": exp, "strategy": "UCB1"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "experiment_id": exp,
        "strategy": "ucb1",
        "strategy_params": {},
        "version": 3,
    }
    assert (await client.get(f"/experiments/{exp}")).json()["strategy"] == "ucb1"

    stats = await client.get(f"/experiments/{exp}/stats")
    assert stats.status_code == 200, stats.text
    s = stats.json()
    assert [a["arm_id"] for a in s["arms"]] == [*ARMS, "orange-button", "purple"]
    assert s["strategy"] == "ucb1"
    assert sum(a["propensity"] for a in s["arms"]) == pytest.approx(1.0)

    # The original API's error statuses.
    assert (await client.get(f"/experiments/{ns}nope")).status_code == 404
    r = await client.get("/decision", params={"experiment_id": f"{ns}nope"})
    assert r.status_code == 404
    assert "not found" in r.json()["detail"]
    assert (await client.get(f"/experiments/{ns}nope/stats")).status_code == 404
    r = await client.post(
        "/reward", json={"experiment_id": f"{ns}nope", "arm_id": "a", "reward": 1.0}
    )
    assert r.status_code == 404
    assert (
        await client.post(f"/experiments/{ns}nope/arms", json={"arm_ids": ["z"]})
    ).status_code == 404
    r = await client.post("/config", json={"experiment_id": f"{ns}nope", "strategy": "ucb1"})
    assert r.status_code == 404
    r = await client.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
    assert r.status_code == 409
    r = await client.post(f"/experiments/{exp}/arms", json={"arm_ids": ["new", "purple"]})
    assert r.status_code == 409
    assert "purple" in r.json()["detail"]
    assert len((await client.get(f"/experiments/{exp}")).json()["arm_ids"]) == 5
    assert (await client.get("/decision")).status_code == 422


async def test_default_strategy_comes_from_settings(client: httpx.AsyncClient, ns: str) -> None:
    r = await client.post("/experiments", json={"experiment_id": f"{ns}d", "arm_ids": ["a", "b"]})
    assert r.status_code == 201
    assert r.json()["strategy"] == "thompson"


async def test_racing_creates_have_exactly_one_winner(client: httpx.AsyncClient, ns: str) -> None:
    exp = f"{ns}race"
    results = await asyncio.gather(
        *(
            client.post("/experiments", json={"experiment_id": exp, "arm_ids": [f"a{i}", "b"]})
            for i in range(32)
        )
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 31
    winner = next(r for r in results if r.status_code == 201).json()
    stored = (await client.get(f"/experiments/{exp}")).json()
    assert stored.pop("units")["assignment"] == "sticky"  # GET adds the unit settings
    assert stored == winner


async def test_concurrent_add_arms_lose_nothing(client: httpx.AsyncClient, ns: str) -> None:
    exp = f"{ns}arms"
    assert (
        await client.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
    ).status_code == 201
    new = [f"n{i}" for i in range(40)]
    results = await asyncio.gather(
        *(client.post(f"/experiments/{exp}/arms", json={"arm_ids": [a]}) for a in new)
    )
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    final = (await client.get(f"/experiments/{exp}")).json()
    assert len(final["arm_ids"]) == 42
    assert final["version"] == 41
    # Order of acceptance = order of versions; each response saw its own arm appended last.
    accepted = sorted((r.json() for r in results), key=lambda b: b["version"])
    assert [b["version"] for b in accepted] == list(range(2, 42))
    assert final["arm_ids"] == ["a", "b", *(b["arm_ids"][-1] for b in accepted)]
    assert sorted(final["arm_ids"][2:]) == sorted(new)


async def test_invalid_params_store_nothing(client: httpx.AsyncClient, ns: str) -> None:
    exp = f"{ns}bad-params"
    for body in (
        {"strategy": "epsilon_greedy", "strategy_params": {"epsilon": 5}},
        {"strategy": "thompson", "strategy_params": {"bogus": 1}},
        {"strategy_params": {"seed": "x"}},
        {"strategy": "softmax"},
    ):
        r = await client.post("/experiments", json={"experiment_id": exp, "arm_ids": ARMS, **body})
        assert r.status_code == 422, (body, r.text)
    assert (await client.get(f"/experiments/{exp}")).status_code == 404
    assert (await client.get("/decision", params={"experiment_id": exp})).status_code == 404
    assert (await client.get("/experiments")).json() == []
    # And a hot-swap to invalid params leaves the config as it was.
    assert (await _create(client, exp)).status_code == 201
    r = await client.post(
        "/config",
        json={
            "experiment_id": exp,
            "strategy": "epsilon_greedy",
            "strategy_params": {"epsilon": -1},
        },
    )
    assert r.status_code == 422
    assert (await client.get(f"/experiments/{exp}")).json()["version"] == 1


@pytest.mark.parametrize("bad", ["a\tb", "a\u200bb", "a\x00b", "x" * 10_000, "", " "])
async def test_invalid_ids_are_422(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.post("/experiments", json={"experiment_id": bad, "arm_ids": ["a", "b"]})
    assert r.status_code == 422
    assert len(r.content) < 2000  # the 10 kB input is not echoed back
    r = await client.post("/experiments", json={"experiment_id": "ok-id", "arm_ids": ["a", bad]})
    assert r.status_code == 422
    assert (await client.get("/decision", params={"experiment_id": bad})).status_code == 422


async def test_reward_validation(client: httpx.AsyncClient, ns: str) -> None:
    exp = f"{ns}rv"
    assert (await _create(client, exp)).status_code == 201
    d = (await client.get("/decision", params={"experiment_id": exp})).json()
    other = next(a for a in ARMS if a != d["arm_id"])
    r = await client.post(
        "/reward",
        json={
            "experiment_id": exp,
            "arm_id": other,
            "reward": 1.0,
            "decision_id": d["decision_id"],
        },
    )
    assert r.status_code == 422
    assert d["arm_id"] in r.json()["detail"]
    r = await client.post("/reward", json={"experiment_id": exp, "arm_id": "nope", "reward": 1.0})
    assert r.status_code == 422
    assert all(a in r.json()["detail"] for a in ARMS)
    r = await client.post(
        "/reward",
        json={
            "experiment_id": exp,
            "arm_id": ARMS[0],
            "reward": 1.0,
            "decision_id": "not-a-decision",
        },
    )
    assert r.status_code == 422
    # a superscript digit as the arm index: a 500 while str.isdigit() parsed it
    body = {"experiment_id": exp, "arm_id": ARMS[0], "reward": 1.0}
    r = await client.post("/reward", json=body | {"decision_id": "a" * 32 + ".\u00b2"})
    assert r.status_code == 422, r.text
    assert "was not issued by this service" in r.json()["detail"]
    for bad in (1.5, -0.5, "1", True):
        r = await client.post(
            "/reward", json={"experiment_id": exp, "arm_id": ARMS[0], "reward": bad}
        )
        assert r.status_code == 422, bad
    r = await client.post(
        "/reward",
        content=f'{{"experiment_id": "{exp}", "arm_id": "{ARMS[0]}", "reward": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422


async def test_every_decision_and_reward_is_logged(
    client: httpx.AsyncClient, ns: str, kafka_bootstrap: str
) -> None:
    exp = f"{ns}logged"
    names = TopicNames.with_prefix(ns)
    assert (
        await _create(
            client, exp, strategy="epsilon_greedy", strategy_params={"epsilon": 0.2, "seed": 7}
        )
    ).status_code == 201
    decisions = await asyncio.gather(
        *(client.get("/decision", params={"experiment_id": exp}) for _ in range(50))
    )
    served = [r.json() for r in decisions]
    for i, d in enumerate(served[:20]):
        r = await client.post(
            "/reward",
            json={
                "experiment_id": exp,
                "arm_id": d["arm_id"],
                "reward": i % 2,
                "decision_id": d["decision_id"],
            },
        )
        assert r.status_code == 200, r.text

    logged = await _consume(kafka_bootstrap, names.decisions, exp, want=50)
    assert len(logged) == 50
    assert all(isinstance(e, DecisionMade) for e in logged)
    by_id = {e.decision_id: e for e in logged}
    assert set(by_id) == {d["decision_id"] for d in served}
    for d in served:
        e = by_id[d["decision_id"]]
        assert e.arm_id == d["arm_id"]
        assert e.propensity == pytest.approx(d["propensity"])
        assert e.strategy == "epsilon_greedy"
        assert e.strategy_params == {"epsilon": 0.2, "seed": 7}
        assert e.config_version == 1

    rewards = await _consume(kafka_bootstrap, names.rewards, exp, want=20)
    assert len(rewards) == 20
    assert all(isinstance(e, RewardObserved) for e in rewards)
    assert {e.decision_id for e in rewards} == {d["decision_id"] for d in served[:20]}

    created = await _consume(kafka_bootstrap, names.experiments, exp, want=1)
    assert len(created) == 1
    assert isinstance(created[0], ExperimentCreated)
    assert created[0].config.strategy_params == {"epsilon": 0.2, "seed": 7}


async def test_commands_are_logged_with_the_stored_config(
    client: httpx.AsyncClient, ns: str, kafka_bootstrap: str
) -> None:
    exp = f"{ns}cmds"
    big_seed = 2**62 + 12345  # would not survive a cjson re-encode
    assert (
        await _create(client, exp, strategy="thompson", strategy_params={"seed": big_seed})
    ).status_code == 201
    r = await client.post(f"/experiments/{exp}/arms", json={"arm_ids": ["x"]})
    assert r.json()["strategy_params"] == {"seed": big_seed}
    r = await client.post(
        "/config",
        json={
            "experiment_id": exp,
            "strategy": "epsilon_greedy",
            "strategy_params": {"epsilon": 0.123456789012345678},
        },
    )
    assert r.status_code == 200
    events = await _consume(kafka_bootstrap, TopicNames.with_prefix(ns).experiments, exp, want=3)
    assert [e.config.version for e in events] == [1, 2, 3]
    stored = (await client.get(f"/experiments/{exp}")).json()
    assert events[-1].config.arm_ids == tuple(stored["arm_ids"])
    assert (
        events[-1].config.strategy_params
        == stored["strategy_params"]
        == {"epsilon": 0.123456789012345678}
    )
    assert events[1].config.strategy_params == {"seed": big_seed}
    assert events[2].previous_strategy == "thompson"


async def test_seeded_thompson_spreads_over_untouched_arms(
    client: httpx.AsyncClient, ns: str
) -> None:
    exp = f"{ns}seeded"
    r = await _create(client, exp, strategy="thompson", strategy_params={"seed": 42})
    assert r.status_code == 201
    arms = [
        (await client.get("/decision", params={"experiment_id": exp})).json()["arm_id"]
        for _ in range(200)
    ]
    assert set(arms) == set(ARMS)


async def test_both_serving_paths_answer_alike(decider_settings: SettingsFactory, ns: str) -> None:
    """Scenario: the same decisions and rewards (accepted, and each kind of rejection)
    sent once to the served app, where the raw fast path answers them, and once to the
    FastAPI app alone, where the routes do.
    We expect the same answers: byte for byte where nothing is random, and for a
    decision the same fields, experiment, strategy, arms and propensity of its arm."""
    exp = f"{ns}paths"
    async with both_paths(decider_settings()) as (served, routes):
        assert (await _create(served, exp, strategy="epsilon_greedy")).status_code == 201
        fast = await served.get("/decision", params={"experiment_id": exp})
        slow = await routes.get("/decision", params={"experiment_id": exp})
        assert fast.status_code == slow.status_code == 200
        assert fast.headers["content-type"] == slow.headers["content-type"]
        a, b = fast.json(), slow.json()
        assert list(a) == list(b)
        random = ("arm_id", "decision_id", "propensity")
        assert {k: v for k, v in a.items() if k not in random} == {
            k: v for k, v in b.items() if k not in random
        }
        stats = (await served.get(f"/experiments/{exp}/stats")).json()["propensities"]
        assert (a["propensity"], b["propensity"]) == (stats[a["arm_id"]], stats[b["arm_id"]])
        other = next(arm for arm in ARMS if arm != a["arm_id"])
        rewards: list[dict[str, Any]] = [
            {"arm_id": a["arm_id"], "decision_id": a["decision_id"], "event_id": "same-1"},
            {"arm_id": other, "decision_id": a["decision_id"]},  # arm_mismatch
            {"arm_id": "nope"},  # unknown_arm
            {"arm_id": ARMS[0], "decision_id": "a" * 32 + ".x"},  # bad_decision_id
            {"arm_id": ARMS[0], "experiment_id": f"{ns}missing"},  # unknown experiment
        ]
        statuses = []
        for extra in rewards:
            body = {"experiment_id": exp, "reward": 1.0, **extra}
            fast = await served.post("/reward", json=body)
            slow = await routes.post("/reward", json=body)
            assert fast.status_code == slow.status_code, (extra, fast.text, slow.text)
            assert fast.content == slow.content, extra
            assert fast.headers["content-type"] == slow.headers["content-type"]
            statuses.append(fast.status_code)
        assert statuses == [200, 422, 422, 422, 404]

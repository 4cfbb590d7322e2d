"""The holdout and the stopping rule end to end (real Kafka and Redis; decider, reward
consumer and projector in process): the settings over REST, a 20% holdout in the
decisions with its propensities, and a clear winner declared on the experiments topic
and in ``/stats``, with the uplift over the holdout and ``mab report``'s summary."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from mab_cli.report_cmd import render
from mab_client.models import StatsPublic
from schemas.codec import decode
from schemas.events import DecisionMade, WinnerDeclared
from schemas.topics import TopicNames
from tests.fixtures.faults import read_topics
from tests.fixtures.in_process import in_process, wait_for

pytestmark = pytest.mark.integration

ARMS = ["control", "b", "c"]


async def create(c: httpx.AsyncClient, exp: str, **body: Any) -> httpx.Response:
    return await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ARMS, **body})


async def test_holdout_settings_over_rest(client: httpx.AsyncClient, ns: str) -> None:
    """Scenario: experiments created with bad and good holdout and stopping settings,
    then changed. We expect 422 naming the rule for a holdout without a control, a
    control that is not an arm, a share above 0.5 and a stop probability below 0.5;
    the settings refused by /config (fixed at creation) and kept by add-arms and a
    strategy swap (the Lua scripts rewrite the stored config)."""
    exp = f"{ns}shop"
    c = client
    for body, message in (
        ({"holdout_share": 0.2}, "needs a control_arm_id"),
        ({"holdout_share": 0.2, "control_arm_id": "nope"}, "is not an arm"),
        ({"holdout_share": 0.6, "control_arm_id": "control"}, "less than or equal to 0.5"),
        ({"stop_probability": 0.3}, "greater than or equal to 0.5"),
    ):
        r = await create(c, exp, **body)
        assert r.status_code == 422, r.text
        assert message in r.text
    assert (await c.get(f"/experiments/{exp}")).status_code == 404
    settings = {
        "holdout_share": 0.2,
        "control_arm_id": "control",
        "stop_probability": 0.9,
        "stop_expected_loss": 0.002,
    }
    assert (await create(c, exp, **settings)).status_code == 201
    for name in settings:
        body = {"experiment_id": exp, "strategy": "thompson", name: settings[name]}
        r = await c.post("/config", json=body)
        assert r.status_code == 422, r.text
        assert f"{name} cannot change after creation" in r.text
    assert (await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["d"]})).is_success
    assert (await c.post("/config", json={"experiment_id": exp, "strategy": "ucb1"})).is_success
    r = await c.get(f"/experiments/{exp}/allocation")
    assert r.status_code == 200, r.text
    weights = {a["arm_id"]: a["weight"] for a in r.json()["arms"]}
    # ucb1 without data: ties over the 4 arms; the control gets the holdout on top
    assert weights["control"] == pytest.approx(0.2 + 0.8 / 4)
    assert weights["b"] == pytest.approx(0.8 / 4)


async def test_a_fifth_of_decisions_go_to_the_holdout_with_their_true_propensity(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: holdout_share 0.2 on "control", epsilon-greedy without data (the policy
    is uniform: 1/3 per arm); 1,500 decisions without a unit and 1,500 units in
    consistent mode. We expect ~20% of each held out (4.5 standard errors), all on the
    control, ids marked ``h`` and ``holdout: true`` in their DecisionMade (absent on the
    others), a unit's answer the same on a second request, and every decision logging
    0.2 + 0.8/3 for the control and 0.8/3 for the others."""
    exp, units = f"{ns}shop", f"{ns}units"
    services = in_process(kafka_bootstrap, redis_url, ns)
    body = {"holdout_share": 0.2, "control_arm_id": "control", "strategy": "epsilon_greedy"}
    n = 1500
    async with services.serving() as c:
        assert (await create(c, exp, **body)).status_code == 201
        assert (await create(c, units, assignment="consistent", **body)).status_code == 201
        plain = [(await c.get("/decision", params={"experiment_id": exp})).json() for _ in range(n)]
        by_unit = [
            (await c.get("/decision", params={"experiment_id": units, "unit_id": f"v{i}"})).json()
            for i in range(n)
        ]
        again = (await c.get("/decision", params={"experiment_id": units, "unit_id": "v7"})).json()
    assert again["decision_id"] == by_unit[7]["decision_id"]
    for answers in (plain, by_unit):
        held = [d for d in answers if d["decision_id"].endswith("h")]
        assert abs(len(held) / n - 0.2) < 4.5 * (0.2 * 0.8 / n) ** 0.5
        assert {d["arm_id"] for d in held} == {"control"}
        for d in answers:
            want = 0.2 + 0.8 / 3 if d["arm_id"] == "control" else 0.8 / 3
            assert d["propensity"] == pytest.approx(want), d
    names = TopicNames.with_prefix(ns)
    logged = [decode(r.value or b"") for r in read_topics(kafka_bootstrap, [names.decisions])]
    decisions = {e.decision_id: e for e in logged if isinstance(e, DecisionMade)}
    for d in plain:
        event = decisions[d["decision_id"]]
        assert event.holdout is (True if d["decision_id"].endswith("h") else None)
        assert event.propensity == d["propensity"]


async def test_a_clear_winner_is_declared_with_the_uplift_over_the_holdout(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: holdout 0.2 on "control"; "c" converts 40%, the others 5%; 1,200
    visitors decided by Thompson and each rewarded (0 or 1) with its decision id. We
    expect a WinnerDeclared for "c" on the experiments topic (once), the same winner in
    /stats with P(best) >= 0.95, the uplift's two sides counting every visitor and its
    interval above 0, the winner then taking the bandit's traffic (route_to_winner), and
    ``mab report`` saying all of it."""
    exp = f"{ns}shop"
    rates = {"control": 0.05, "b": 0.05, "c": 0.4}
    rng = random.Random(11)
    services = in_process(kafka_bootstrap, redis_url, ns)
    n = 1200
    async with services.serving() as c:
        body = {
            "holdout_share": 0.2,
            "control_arm_id": "control",
            "strategy": "thompson",
            "route_to_winner": True,
        }
        assert (await create(c, exp, **body)).status_code == 201
        for _ in range(n):
            d = (await c.get("/decision", params={"experiment_id": exp})).json()
            reward = float(rng.random() < rates[d["arm_id"]])
            r = await c.post(
                "/reward",
                json={
                    "experiment_id": exp,
                    "arm_id": d["arm_id"],
                    "reward": reward,
                    "decision_id": d["decision_id"],
                },
            )
            assert r.status_code == 200, r.text
        consumer = services.consumer
        await wait_for(lambda: consumer.stats.applied >= 2 * n, 60, "rewards folded")
        stats = StatsPublic.model_validate_json((await c.get(f"/experiments/{exp}/stats")).content)
        # Routed: once the decider's cache holds the snapshot with the winner, the
        # bandit serves "c" alone (logged 0.8) and the holdout the control.
        after: list[dict[str, Any]] = []
        for _ in range(400):
            d = (await c.get("/decision", params={"experiment_id": exp})).json()
            after = [*after, d][-60:] if d["arm_id"] in ("c", "control") else []
            if len(after) == 60:
                break
            await asyncio.sleep(0.01)
    assert len(after) == 60, "the declared winner did not take the traffic"
    assert {d["propensity"] for d in after if d["arm_id"] == "c"} == {0.8}
    assert stats.propensities["b"] == 0.0
    assert consumer.stats.rejected == {}
    stopping, uplift = stats.stopping, stats.uplift
    assert stopping is not None
    assert stopping.winner == "c"
    assert stopping.leader == "c"
    assert {a.arm_id: a.p_best for a in stopping.arms}["c"] >= 0.95
    assert uplift is not None
    assert uplift.holdout_visitors + uplift.bandit_visitors == n
    assert uplift.low > 0.0
    names = TopicNames.with_prefix(ns)
    logged = [decode(r.value or b"") for r in read_topics(kafka_bootstrap, [names.experiments])]
    (won,) = [e for e in logged if isinstance(e, WinnerDeclared)]
    assert (won.arm_id, won.event_id) == ("c", f"win-{exp}")
    assert won.p_best >= 0.95
    assert won.expected_loss <= won.threshold == 0.001
    text = render(stats)
    assert "Winner: c" in text
    assert f"Uplift vs holdout (20.0% on control): {uplift.uplift:.4g} per visitor" in text

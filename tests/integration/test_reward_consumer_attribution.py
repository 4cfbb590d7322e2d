"""Attribution windows end to end: decider -> Kafka -> reward consumer -> Redis, and replay.

Scenario: an experiment with a 1 s window and default reward 0.0 serves 20 decisions;
5 get a reward in time, the other 15 get none; the consumer's sweep (idle fallback
shortened for the test) logs their defaults; then a reward arrives for a defaulted
decision, and a 0.0 reward without a decision id (the original API's shape).
We expect: 15 defaulted, 0 pending, the late reward counted late and not added (20 pulls,
reward sum 5), the reward without a decision id counted as one more pull, the counts in the stats
endpoint, and ``mab replay --verify`` finding the live state identical to a rebuild.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from mab_cli.replay_runs import ReplayTarget, run_verify
from tests.fixtures.in_process import in_process

pytestmark = pytest.mark.integration


async def eventually(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_expired_decisions_get_the_default_once_and_replay_agrees(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> None:
    services = in_process(
        kafka_bootstrap,
        redis_url,
        ns,
        mab_attribution_sweep_s=0.2,
        mab_attribution_idle_grace_s=0.5,
    )
    consumer, projector = services.consumer, services.projector
    async with services.serving() as c:
        r = await c.post(
            "/experiments",
            json={
                "experiment_id": "win",
                "arm_ids": ["a", "b"],
                "strategy": "thompson",
                "attribution_window_s": 1.0,
            },
        )
        assert r.status_code == 201, r.text
        assert (r.json()["attribution_window_s"], r.json()["default_reward"]) == (1.0, 0.0)
        bad = await c.post(
            "/experiments",
            json={"experiment_id": "w2", "arm_ids": ["a", "b"], "attribution_window_s": 0},
        )
        assert bad.status_code == 422
        decisions = []
        for _ in range(20):
            r = await c.get("/decision", params={"experiment_id": "win"})
            assert r.status_code == 200, r.text
            decisions.append(r.json())

        async def reward_for(decision: dict[str, Any]) -> None:
            body = {"arm_id": decision["arm_id"], "decision_id": decision["decision_id"]}
            r = await c.post("/reward", json={"experiment_id": "win", "reward": 1.0, **body})
            assert r.status_code == 200, r.text

        for d in decisions[:5]:
            await reward_for(d)

        async def stats() -> dict[str, Any]:
            doc: dict[str, Any] = (await c.get("/experiments/win/stats")).json()
            return doc

        async def settled() -> bool:
            s = await stats()
            return bool(
                s["attribution"]["defaulted"] == 15 and sum(a["pulls"] for a in s["arms"]) == 20
            )

        await eventually(settled, 30, "15 defaults folded")
        s = await stats()
        assert s["attribution"] == {
            "window_s": 1.0,
            "pending": 0,
            "defaulted": 15,
            "late": 0,
            "untracked": 0,
        }
        assert sum(a["reward_sum"] for a in s["arms"]) == 5.0
        assert sum(a["decisions"] for a in s["arms"]) == 20

        await reward_for(decisions[10])  # defaulted by now: late
        r = await c.post("/reward", json={"experiment_id": "win", "arm_id": "a", "reward": 0.0})
        assert r.status_code == 200, r.text

        async def late_counted() -> bool:
            s = await stats()
            return bool(s["attribution"]["late"] == 1 and sum(a["pulls"] for a in s["arms"]) == 21)

        await eventually(late_counted, 30, "the late reward")
        s = await stats()
        assert sum(a["reward_sum"] for a in s["arms"]) == 5.0  # late: never added
        assert s["attribution"]["defaulted"] == 15
        n_records = 20 + 5 + 15 + 2  # decisions, rewards, defaults, late + unlinked
        await eventually(
            lambda: asyncio.sleep(0, projector.stats.records >= n_records + 1),
            30,
            "projector catch-up",
        )
    assert consumer.defaults_logged >= 15

    target = ReplayTarget.of(projector.settings, workers=1)
    verified = await run_verify(target, lambda _: None)
    assert verified.differences == []
    assert verified.as_dict()["folded"] >= n_records

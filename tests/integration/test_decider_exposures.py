"""``POST /exposures`` on the real decider, Kafka and Redis, fed by the SDK's local mode.

The reward consumer folds the decisions topic in process, so "in stats" means the
decision went through the real log and the real fold.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from mab_client import AsyncMabClient
from mab_client import calls as sdk_calls
from mab_client.local import LocalSettings, allocation_of, exposure_items
from mab_client.models import AllocationPublic
from schemas.topics import TopicNames
from tests.fixtures.in_process import create_with_allocation, in_process
from tests.fixtures.streams import decisions_in_log

pytestmark = pytest.mark.integration

ARMS = ["blue-button", "green-button", "Free Shipping"]
UNITS = 100_000


async def test_100k_local_decisions_are_logged_and_folded_exactly_once(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int]
) -> None:
    """Scenario: the SDK's local mode decides for 100,000 distinct units and flushes;
    then one of its batches is posted again; then a batch with good and bad items.
    We expect: every unit's decision once in the decisions topic (its local decision id,
    the stored weight as propensity) and once in the folded stats; the re-post answered
    as duplicates with nothing logged; the bad batch a 422 naming each bad index with
    nothing of it logged or marked (its good items are accepted when sent alone)."""
    exp = f"{ns}local"
    services = in_process(kafka_bootstrap, redis_url, ns)
    async with services.serving() as c:
        allocation = await create_with_allocation(c, exp, ARMS)
        weights = {a.arm_id: a.weight for a in allocation.arms}

        mab = AsyncMabClient(
            "http://decider",
            transport=httpx.ASGITransport(app=services.decider),
            local=True,
            local_settings=LocalSettings(max_buffer=2 * UNITS),
        )
        chosen: dict[str, str] = {}
        for i in range(UNITS):
            d = await mab.decide(exp, f"visitor-{i}")
            chosen[d.decision_id] = d.arm_id
        local = mab.local
        assert local is not None
        # What the SDK will send first, kept to post it again afterwards.
        first_batch = exposure_items(local, list(local.buffer)[:1000])
        await mab.aclose()  # flushes everything
        metrics = local.metrics
        assert (metrics.decisions, metrics.sent, metrics.duplicates) == (UNITS, UNITS, 0)
        assert (metrics.dropped, metrics.rejected, metrics.stale) == (0, 0, False)

        # Posted again: duplicates, nothing new.
        again = sdk_calls.exposures(first_batch)
        r = await c.post("/exposures", json=again.json)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ok", "accepted": 0, "duplicates": 1000}

        # A batch with bad items: a 422 naming each of them, nothing of it logged.
        good = [
            {
                "experiment_id": exp,
                "unit_id": f"late-{i}",
                "arm_id": "",
                "allocation_version": allocation.version,
                "exposure_id": f"late-{i}",
                "ts": 1_776_189_600.0,
            }
            for i in range(2)
        ]
        for item in good:
            item["arm_id"] = rule_arm(allocation, str(item["unit_id"]))
        wrong_arm = {**good[0], "exposure_id": "bad-1", "unit_id": "late-0"}
        wrong_arm["arm_id"] = next(a for a in ARMS if a != good[0]["arm_id"])
        bad: list[Any] = [
            wrong_arm,
            {**good[0], "exposure_id": "bad-2", "arm_id": "purple"},
            {**good[0], "exposure_id": "bad-3", "allocation_version": allocation.version - 5},
            {**good[0], "exposure_id": "bad-4", "experiment_id": f"{ns}nope"},
            {**good[0], "exposure_id": "bad 5"},
            "not an object",
        ]
        r = await c.post("/exposures", json={"exposures": [good[0], *bad, good[1]]})
        assert r.status_code == 422, r.text
        types = {e["index"]: e["type"] for e in r.json()["detail"]}
        assert types == {
            1: "arm_not_assigned",
            2: "unknown_arm",
            3: "unknown_allocation",
            4: "unknown_experiment",
            5: "string_pattern_mismatch",
            6: "model_type",
        }
        r = await c.post("/exposures", json={"exposures": good})
        assert r.json() == {"status": "ok", "accepted": 2, "duplicates": 0}, r.text

        logged = await decisions_in_log(kafka_bootstrap, TopicNames.with_prefix(ns).decisions)
        assert len(logged) == UNITS + 2
        by_id = Counter(ev.decision_id for ev in logged)
        assert max(by_id.values()) == 1
        for ev in logged:
            assert ev.assignment == "local"
            assert ev.allocation_version == allocation.version
            assert ev.propensity == weights[ev.arm_id]
        assert {ev.decision_id: ev.arm_id for ev in logged if ev.decision_id in chosen} == chosen
        assert {ev.exposure_id for ev in logged} >= {"late-0", "late-1"}

        deadline = time.monotonic() + 60
        while True:
            stats = (await c.get(f"/experiments/{exp}/stats")).json()
            per_arm = {a["arm_id"]: int(a["decisions"]) for a in stats["arms"]}
            if sum(per_arm.values()) >= UNITS + 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert per_arm == Counter(ev.arm_id for ev in logged)


def rule_arm(allocation: AllocationPublic, unit_id: str) -> str:
    """The arm the assignment rule gives ``unit_id`` under ``allocation``."""
    return allocation_of(allocation).choose(unit_id).arm_id

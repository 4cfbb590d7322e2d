"""The SRM check in ``/stats`` and the ``mab_srm_p_value`` gauge, on the real Redis.

The unit counts per allocation version are the reward consumer's (its fold writes them
into the snapshot); here they are written as that snapshot, with the allocation records
the decider would have stored, so each test knows exactly what the check must say.
"""

from __future__ import annotations

import numpy as np
import pytest
from redis.asyncio import Redis

from bandit_core.allocation import AllocationRecord
from bandit_core.state import ExperimentState
from mab_client.models import StatsPublic
from schemas.redis_keys import RedisKeys
from services.decider.runtime import runtime_of
from services.decider.srm import refresh_srm_gauges
from tests.integration.conftest import SettingsFactory, serve_decider

pytestmark = pytest.mark.integration

ARMS = ("blue-button", "green-button", "Free Shipping")
V0 = 29_603_160  # an epoch of 60 s in 2026


async def store_units(
    redis: Redis,
    keys: RedisKeys,
    exp: str,
    per_version: list[tuple[list[float], list[int]]],
) -> ExperimentState:
    """Versions ``V0, V0 + 1, ...`` with their weights and unit counts per arm: the
    allocation records and the folded snapshot."""
    state = ExperimentState(experiment_id=exp)
    for i, (weights, counts) in enumerate(per_version):
        version = V0 + i
        record = AllocationRecord(version, ARMS, tuple(weights), 0.0, float(version * 60))
        await redis.set(keys.allocation(exp, version), record.encode(), ex=3600)
        for arm, count in zip(ARMS, counts, strict=True):
            for _ in range(count):
                state.count_unit(version, arm)
            state.arm(arm).units += count
    state.version = 1
    await redis.set(keys.experiment(exp).snapshot, state.snapshot_bytes())
    return state


def moving(
    rng: np.random.Generator, versions: int, units: int
) -> list[tuple[list[float], list[int]]]:
    """Correct assignment under weights that move every version."""
    out = []
    for _ in range(versions):
        w = [float(x) for x in rng.dirichlet([2.0, 2.0, 2.0])]
        out.append((w, [int(c) for c in rng.multinomial(units, w)]))
    return out


async def test_stats_report_srm_units_and_the_gauge(
    decider_settings: SettingsFactory, ns: str, redis: Redis
) -> None:
    """Scenario: one experiment whose units followed 12 moving allocations (the oldest
    no longer stored), one with a 52/48 split on 20,000 units at 50/50, one without
    units. We expect: no alarm for the first, with the expired version's units
    counted as skipped; an alarm for the second; per-arm unique units; no ``srm`` for
    the third; the gauge for exactly the first two, set by ``/stats`` and by the
    background refresh alike, and gone once an experiment's counts are gone."""
    keys = RedisKeys(ns)
    fine, skewed, plain = f"{ns}Free Shipping", f"{ns}cta test", f"{ns}plain"
    async with serve_decider(decider_settings()) as (c, app):
        for exp in (fine, skewed, plain):
            r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": list(ARMS)})
            assert r.status_code == 201, r.text
        versions = moving(np.random.default_rng(16), 12, 60)
        await store_units(redis, keys, fine, versions)
        await redis.delete(keys.allocation(fine, V0))  # expired: past the retention
        versions_stored = versions[1:]
        half = [0.5, 0.5, 0.0]
        await store_units(redis, keys, skewed, [(half, [520, 480, 0])] * 20)

        r = await c.get(f"/experiments/{fine}/stats")
        assert r.status_code == 200, r.text
        stats = StatsPublic.model_validate_json(r.content)
        assert stats.srm is not None
        assert stats.srm.alarm is False
        assert stats.srm.p_value is not None
        assert stats.srm.p_value > 0.001
        assert stats.srm.versions == 11
        assert stats.srm.units == sum(sum(counts) for _, counts in versions_stored)
        assert stats.srm.skipped_versions == 1
        assert stats.srm.skipped_units == sum(versions[0][1])
        assert stats.assignment == "sticky"
        for i, arm in enumerate(ARMS):
            assert stats.arm(arm).units == sum(counts[i] for _, counts in versions)

        r = await c.get(f"/experiments/{skewed}/stats")
        bad = StatsPublic.model_validate_json(r.content).srm
        assert bad is not None
        assert bad.alarm is True
        assert bad.units == 20_000
        assert bad.df == 1
        assert bad.chi2 == pytest.approx(32.0)

        r = await c.get(f"/experiments/{plain}/stats")
        assert "srm" not in r.json()
        assert [a["units"] for a in r.json()["arms"]] == [0, 0, 0]

        def gauges(text: str) -> dict[str, float]:
            out = {}
            for line in text.splitlines():
                if line.startswith("mab_srm_p_value{"):
                    label, value = line.rsplit(" ", 1)
                    out[label.split('"')[1]] = float(value)
            return out

        shown = gauges((await c.get("/metrics")).text)
        assert set(shown) == {fine, skewed}
        assert shown[fine] == pytest.approx(stats.srm.p_value)
        assert shown[skewed] < 0.001

        # The background refresh: same values, and an experiment whose counts are gone
        # loses its series.
        await redis.delete(keys.experiment(skewed).snapshot)
        rt = runtime_of(app.api)
        assert rt is not None
        assert await refresh_srm_gauges(rt.store, rt.allocations, rt.metrics) == 1
        refreshed = gauges((await c.get("/metrics")).text)
        assert set(refreshed) == {fine}
        assert refreshed[fine] == pytest.approx(stats.srm.p_value)

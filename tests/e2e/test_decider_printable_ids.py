"""End to end: ids as storefront teams write them, and ``user_context``, through every
process of the product.

The decider (granian), the reward consumer and the projector run as processes against
the real Kafka and Redis; the SDK talks to the decider like a storefront back end; then
``mab replay --verify`` rebuilds everything from the topics and must find the live state
identical, and ``mab audit export`` must carry each reward's context.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from mab_client import AsyncMabClient
from tests.e2e.conftest import Services
from tests.fixtures.ids import STOREFRONT_IDS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: The original API's ids that the earlier charset refused, and one with a '/'.
IDS = [*STOREFRONT_IDS, "spring/sale 2026"]
ARMS = ["Blue | button", "Green: 10%", "{rouge}*"]

T = TypeVar("T")


async def eventually(read: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> T:
    """Poll ``read`` until ``ok`` holds (folding and projecting are asynchronous)."""
    last: T | None = None
    try:
        async with asyncio.timeout(60):
            while True:
                last = await read()
                if ok(last):
                    return last
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"never reached the expected state: {last}") from None


def mab(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mab_cli.main", *args],
        cwd=ROOT,
        env=services.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.timeout(600)  # three services, then a replay, on a shared 2-core machine
async def test_printable_ids_and_user_context_end_to_end(
    services: Services, tmp_path: Path
) -> None:
    """Scenario: one experiment per id of :data:`IDS` (the first created untrimmed), one
    decision each and its reward with a ``user_context``, with the projector running.
    We expect: create, decision, reward, stats and timeseries all answer for the right
    experiment; the fold and the projection count the reward; ``mab replay --verify``
    exits 0 (replay rebuilds the same keys from the same encoded ids); the audit export
    of an experiment carries the context."""
    services.env["MAB_PROJECTOR_GROUP_ID"] = f"{services.ns}projector"
    services.start("projector", [sys.executable, "-m", "services.projector"])
    context = {"segment": "returning", "locale": "fr-FR", "cart_value": 42.5}
    async with AsyncMabClient(services.api_url, timeout=10) as client:
        created = await client.create_experiment(f"  {IDS[0]}  ", [f" {a}" for a in ARMS])
        assert (created.experiment_id, created.arm_ids) == (IDS[0], ARMS)
        for exp in IDS[1:]:
            assert (await client.create_experiment(exp, ARMS)).experiment_id == exp
        served: dict[str, str] = {}
        for exp in IDS:
            d = await client.decide(exp)
            assert (d.experiment_id, d.arms) == (exp, ARMS)
            receipt = await client.reward_for(d, 1.0, context)
            assert (receipt.experiment_id, receipt.arm_id) == (exp, d.arm_id)
            served[exp] = d.arm_id
        for exp, arm in served.items():
            # The reward is acknowledged, its decision only enqueued: wait for both.
            stats = await eventually(
                partial(client.stats, exp),
                lambda s: s.total_pulls == 1 and sum(a.decisions for a in s.arms) == 1,
            )
            assert stats.experiment_id == exp
            assert stats.arm(arm).pulls == 1
            assert stats.arm(arm).decisions == 1
            series = await eventually(
                partial(client.timeseries, exp, "minute"),
                lambda t: sum(p.rewards for p in t.points) == 1,
            )
            assert series.experiment_id == exp
            assert [(p.arm_id, p.decisions, p.rewards) for p in series.points] == [(arm, 1, 1)]

    verify = mab(services, "replay", "--verify", "--workers", "1")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "identical" in verify.stdout

    out = tmp_path / "audit.csv"
    export = mab(services, "audit", "export", "--experiment", f" {IDS[5]} ", "--out", str(out))
    assert export.returncode == 0, export.stdout + export.stderr
    with out.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["row_kind"], r["arm_id"]) for r in rows] == [("joined", served[IDS[5]])]
    assert json.loads(rows[0]["user_context"]) == context

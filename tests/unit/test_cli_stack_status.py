"""``mab status``'s experiment table: assignment mode, unique units and SRM state, read
through the SDK (an HTTP transport answering as the decider does)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mab_cli.stack_cmd import srm_table

pytestmark = pytest.mark.unit


def _stats(exp: str, units: list[int], srm: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "experiment_id": exp,
        "strategy": "thompson",
        "strategy_params": {},
        "config_version": 1,
        "snapshot_version": 3,
        "arms": [
            {
                "arm_id": f"arm-{i}",
                "pulls": 0,
                "reward_sum": 0.0,
                "mean": 0.0,
                "decisions": u,
                "propensity": 0.5,
                "units": u,
            }
            for i, u in enumerate(units)
        ],
        "propensities": {f"arm-{i}": 0.5 for i in range(len(units))},
        "assignment": "sticky",
    }
    if srm is not None:
        body["srm"] = srm
    return body


SRM = {"chi2": 1.0, "df": 1, "units": 30, "versions": 2, "method": "pooled"}
STATS = {
    "cta": _stats("cta", [0, 0], None),
    "hero": _stats("hero", [10, 20], {**SRM, "p_value": 0.31, "alarm": False}),
    "price": _stats("price", [500, 420], {**SRM, "p_value": 1e-6, "alarm": True}),
    "tiny": _stats("tiny", [2, 1], {**SRM, "p_value": None, "alarm": False, "reason": "too few"}),
}


def _decider(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/experiments":
        assert request.headers["authorization"] == "Bearer read-key"
        return httpx.Response(
            200,
            json=[
                {
                    "experiment_id": e,
                    "arm_ids": ["arm-0", "arm-1"],
                    "strategy": "thompson",
                    "strategy_params": {},
                    "version": 1,
                }
                for e in STATS
            ],
        )
    exp = request.url.path.split("/")[2]
    return httpx.Response(200, json=STATS[exp])


def test_status_lists_each_experiments_srm_state() -> None:
    out = srm_table("http://decider", "read-key", httpx.MockTransport(_decider))
    lines = out.splitlines()
    assert lines[0].split() == ["experiment", "assignment", "units", "srm"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["cta"].split()[1:] == ["sticky", "0", "-"]
    assert "ok p=0.31 (pooled)" in rows["hero"]
    assert "ALARM p=1e-06 (pooled)" in rows["price"]
    assert "920" in rows["price"]
    assert "n/a (too few)" in rows["tiny"]


def test_status_says_why_when_the_decider_refuses() -> None:
    refused = httpx.MockTransport(lambda r: httpx.Response(401, json={"detail": "bad key"}))
    out = srm_table("http://decider", None, refused)
    assert out.startswith("experiments: not read from http://decider:")

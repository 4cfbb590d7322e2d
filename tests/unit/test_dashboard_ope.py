"""The dashboard's off-policy evaluation section under AppTest, against a fake API.

Same fake as tests/unit/test_dashboard_app.py (canned JSON in the decider's shapes on a
stdlib HTTP server), plus a canned ``GET /experiments/two-arms/evaluate``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.ope_view import estimates_chart, estimates_frame
from mab_client import Evaluation
from tests.unit.test_dashboard_app import (
    APP,
    ARMS2,
    TIMEOUT,
    TWO_POINTS,
    FakeApi,
    _experiment,
    _stats,
    _timeseries,
    served,
)

pytestmark = pytest.mark.unit

EVALUATION: dict[str, Any] = {
    "experiment_id": "two-arms",
    "strategy": "ucb1",
    "strategy_params": {"c": 0.5},
    "missing_reward": "drop",
    "confidence": 0.95,
    "estimates": [
        {"estimator": "ips", "value": 0.31, "std_error": 0.02, "ci_low": 0.27, "ci_high": 0.35},
        {"estimator": "snips", "value": 0.3, "std_error": 0.015, "ci_low": 0.27, "ci_high": 0.33},
        {"estimator": "dr", "value": 0.305, "std_error": 0.01, "ci_low": 0.285, "ci_high": 0.325},
    ],
    "logged": {
        "estimator": "logged",
        "value": 0.25,
        "std_error": 0.01,
        "ci_low": 0.23,
        "ci_high": 0.27,
    },
    "ess": 412.5,
    "weight_mean": 1.01,
    "weight_max": 6.0,
    "max_weight_share": 0.004,
    "arms": [
        {
            "arm_id": a,
            "logged_decisions": 500,
            "logged_share": 0.5,
            "target_share": s,
            "mean_reward": m,
        }
        for a, s, m in zip(ARMS2, (0.2, 0.8), (0.2, 0.3), strict=True)
    ],
    "warnings": ["thin support: effective sample size 412.5 of 1000 decisions"],
    "decisions_logged": 1000,
    "decisions_considered": 1000,
    "decisions_evaluated": 1000,
    "decisions_without_reward": 0,
    "decisions_skipped": {},
    "rewards_logged": 1000,
    "rewards_unlinked": 0,
    "rewards_orphan": 0,
    "records_rejected": 0,
    "truncated": False,
    "max_decisions": 10000,
    "elapsed_s": 0.4,
}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    fake.routes = {
        "/experiments": (200, [_experiment("two-arms", ARMS2)]),
        "/experiments/two-arms/stats": (200, _stats("two-arms", ARMS2, 50)),
        "/experiments/two-arms/timeseries": (200, _timeseries("two-arms", ARMS2, TWO_POINTS)),
        "/experiments/two-arms/evaluate": (200, EVALUATION),
    }
    with served(fake, monkeypatch):
        yield fake


def _run(at: AppTest | None = None) -> AppTest:
    if at is None:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _evaluate_queries(api: FakeApi) -> list[dict[str, list[str]]]:
    return [q for p, q in api.queries if p.endswith("/evaluate")]


def test_section_waits_for_the_button(api: FakeApi) -> None:
    at = _run()
    assert any(s.value == "Off-policy evaluation" for s in at.subheader)
    assert any("press **Evaluate**" in i.value for i in at.info)
    # the current strategy (thompson) is not offered as the default target
    assert at.selectbox(key="ope_strategy").value != "thompson"
    assert _evaluate_queries(api) == []


def test_evaluate_shows_estimates_ess_and_warnings(api: FakeApi) -> None:
    at = _run()
    at.selectbox(key="ope_strategy").set_value("ucb1")
    _run(at)
    at.text_input(key="ope_params_ucb1").set_value('{"c": 0.5}')
    at.button(key="ope_run").click()
    _run(at)
    assert not at.error
    queries = _evaluate_queries(api)
    assert len(queries) == 1
    assert queries[0]["strategy"] == ["ucb1"]
    assert json.loads(queries[0]["params"][0]) == {"c": 0.5}
    assert queries[0]["missing_reward"] == ["drop"]

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Target (doubly robust)"] == "30.50%"
    assert metrics["Logged policy"] == "25.00%"
    assert metrics["Effective sample size"] == "412"
    assert metrics["Decisions evaluated"] == "1,000"
    assert any("thin support" in w.value for w in at.warning)
    table: pd.DataFrame = next(d.value for d in at.dataframe if "estimator" in d.value.columns)
    assert table["estimator"].tolist() == [
        "IPS",
        "SNIPS",
        "Doubly robust",
        "Logging policy (observed)",
    ]
    assert table["ci_high"].tolist() == pytest.approx([0.35, 0.33, 0.325, 0.27])

    # a rerun (e.g. the page refreshing) shows the kept result without asking again
    _run(at)
    assert len(_evaluate_queries(api)) == 1
    assert any(m.label == "Effective sample size" for m in at.metric)


def test_invalid_params_are_an_error_without_a_request(api: FakeApi) -> None:
    at = _run()
    at.selectbox(key="ope_strategy").set_value("epsilon_greedy")
    _run(at)
    at.text_input(key="ope_params_epsilon_greedy").set_value('{"epsilon": 2}')
    _run(at)
    assert any("epsilon" in e.value for e in at.error)
    assert _evaluate_queries(api) == []


def test_evaluation_failure_is_an_error(api: FakeApi) -> None:
    api.routes["/experiments/two-arms/evaluate"] = (503, {"detail": "cannot reach Kafka"})
    at = _run()
    at.button(key="ope_run").click()
    _run(at)
    assert len(at.error) == 1
    assert "Evaluation failed" in at.error[0].value
    assert "cannot reach Kafka" in at.error[0].value


def test_estimates_frame_and_chart() -> None:
    body: dict[str, Any] = json.loads(json.dumps(EVALUATION))
    body["estimates"][1] = {
        "estimator": "snips",
        "value": None,
        "std_error": None,
        "ci_low": None,
        "ci_high": None,
    }
    frame = estimates_frame(Evaluation.model_validate(body))
    assert frame["value"].tolist()[0] == 0.31
    assert pd.isna(frame["value"].tolist()[1])
    spec = estimates_chart(frame, 0.95).to_dict()
    rows = next(iter(spec["datasets"].values()))
    # undefined estimates are not drawn
    assert [r["estimator"] for r in rows] == ["IPS", "Doubly robust", "Logging policy (observed)"]

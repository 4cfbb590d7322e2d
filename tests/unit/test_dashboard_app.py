"""The dashboard script under ``streamlit.testing.v1.AppTest`` against a fake API.

The fake is a stdlib HTTP server on a free port serving canned JSON in the decider's
shapes (``mab_client/models.py``, ``docs/timeseries-api.md``), so these tests pin
what the page shows for known input without Kafka or Redis. AppTest does not auto-rerun
fragments; each ``run()`` executes the live fragment once, which is what we assert on.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from deploy.stack.ports import free_port

pytestmark = pytest.mark.unit

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT = 90
H = 3600
T0 = 1_795_795_200
ARMS2 = ["blue-button", "green-button"]
ARMS50 = [f"arm-{k:02d}" for k in range(50)]


def _experiment(exp_id: str, arms: list[str]) -> dict[str, Any]:
    return {
        "experiment_id": exp_id,
        "arm_ids": arms,
        "strategy": "thompson",
        "strategy_params": {},
        "version": 1,
    }


def _stats(exp_id: str, arms: list[str], pulls: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        {
            "arm_id": a,
            "pulls": pulls,
            "reward_sum": float(k % 7) if pulls else 0.0,
            "mean": (k % 7) / pulls if pulls else 0.0,
            "decisions": pulls + k if pulls else 0,
            "propensity": 1 / len(arms),
        }
        for k, a in enumerate(arms)
    ]
    return {
        "experiment_id": exp_id,
        "strategy": "thompson",
        "strategy_params": {},
        "config_version": 1,
        "snapshot_version": sum(r["pulls"] + r["decisions"] for r in rows),
        "arms": rows,
        "propensities": {a: 1 / len(arms) for a in arms},
    }


def _point(
    t: int, arm: str, decisions: int, rewards: int, s: float, share: float
) -> dict[str, Any]:
    return {
        "bucket_start": t,
        "arm_id": arm,
        "decisions": decisions,
        "rewards": rewards,
        "reward_sum": s,
        "conversion_rate": s / rewards if rewards else None,
        "traffic_share": share,
    }


def _timeseries(exp_id: str, arms: list[str], points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "experiment_id": exp_id,
        "bucket": "hour",
        "from": T0,
        "to": T0 + 3 * H,
        "arm_ids": arms,
        "points": points,
        "change_points": [{"ts": T0 + H + 60.0, "arm_id": "green-button", "detector": "glr"}],
        "winner_changes": [
            {"bucket_start": T0 + H, "from_arm": "blue-button", "to_arm": "green-button"}
        ],
    }


TWO_POINTS = [
    _point(T0, "blue-button", 30, 30, 6.0, 0.75),
    _point(T0, "green-button", 10, 10, 1.0, 0.25),
    _point(T0 + H, "blue-button", 10, 10, 1.0, 0.2),
    _point(T0 + H, "green-button", 40, 40, 12.0, 0.8),
]


@dataclass
class FakeApi:
    """Canned responses by path; ``reject_minute`` answers bucket=minute with a 422."""

    routes: dict[str, tuple[int, Any]] = field(default_factory=dict)
    reject_minute: bool = False
    queries: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    url: str = ""


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            api.queries.append((parts.path, query))
            if (
                api.reject_minute
                and parts.path.endswith("/timeseries")
                and query.get("bucket") == ["minute"]
            ):
                status, body = (
                    422,
                    {
                        "detail": [
                            {
                                "loc": ["query", "bucket"],
                                "msg": "Input should be 'hour'",
                                "type": "literal_error",
                            }
                        ]
                    },
                )
            else:
                status, body = api.routes.get(parts.path, (404, {"detail": "Not Found"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    fake.routes = {
        "/experiments": (
            200,
            [
                _experiment("two-arms", ARMS2),
                _experiment("fifty-arms", ARMS50),
                _experiment("empty", ["a", "b"]),
            ],
        ),
        "/experiments/two-arms/stats": (200, _stats("two-arms", ARMS2, 50)),
        "/experiments/two-arms/timeseries": (
            200,
            _timeseries("two-arms", ARMS2, TWO_POINTS),
        ),
        "/experiments/fifty-arms/stats": (200, _stats("fifty-arms", ARMS50, 20)),
        "/experiments/fifty-arms/timeseries": (
            200,
            _timeseries(
                "fifty-arms",
                ARMS50,
                [
                    _point(T0, a, 20 + k, 20, float(k % 7), (20 + k) / 2225)
                    for k, a in enumerate(ARMS50)
                ],
            ),
        ),
        "/experiments/empty/stats": (200, _stats("empty", ["a", "b"], 0)),
        "/experiments/empty/timeseries": (200, _timeseries("empty", ["a", "b"], [])),
    }
    with served(fake, monkeypatch):
        yield fake


@contextlib.contextmanager
def served(fake: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``fake`` answering over real HTTP on a free port, the dashboard pointed at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MAB_API_URL", fake.url)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _run(at: AppTest | None = None) -> AppTest:
    if at is None:  # not `or`: an AppTest without elements is falsy
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _arm_table(at: AppTest) -> pd.DataFrame:
    frame: pd.DataFrame = next(d.value for d in at.dataframe if "propensity" in d.value.columns)
    return frame


def _summary(at: AppTest) -> pd.DataFrame:
    frame: pd.DataFrame = next(d.value for d in at.dataframe if "regret_mean" in d.value.columns)
    return frame


def _charts(at: AppTest) -> list[Any]:
    return list(at.get("vega_lite_chart"))


def _chart_rows(chart: Any) -> list[pd.DataFrame]:
    """The data frames a rendered chart ships to the browser (one per dataset)."""
    return [convert_arrow_bytes_to_pandas_df(ds.data.data) for ds in chart.proto.datasets]


def _chart_titles(at: AppTest) -> list[str]:
    titles = []
    for chart in _charts(at):
        spec = json.loads(chart.proto.spec)
        found = [s.get("title") for s in [spec, *spec.get("layer", [])] if s.get("title")]
        titles.append(found[0] if found else "")
    return titles


# --------------------------------------------------------------------------- live tab


def test_api_down_shows_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: nothing listens at MAB_API_URL. We expect one st.error naming the URL
    and how to fix it, no exception, no chart."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MAB_API_URL", url)
    at = _run()
    assert len(at.error) == 1
    message = at.error[0].value
    assert "API unavailable" in message
    assert url in message
    assert "MAB_API_URL" in message
    assert not _charts(at)


def test_api_answering_garbage_is_a_clear_error(api: FakeApi) -> None:
    api.routes["/experiments"] = (200, {"not": "a list"})
    at = _run()
    assert len(at.error) == 1
    assert "Unexpected response from /experiments" in at.error[0].value


def test_no_experiments_is_an_info(api: FakeApi) -> None:
    api.routes["/experiments"] = (200, [])
    at = _run()
    assert not at.error
    assert "No experiments yet" in at.info[0].value


def test_two_arms_table_metrics_and_charts(api: FakeApi) -> None:
    at = _run()
    assert not at.error
    assert not at.warning
    picker = at.selectbox(key="experiment")
    assert picker.options == ["two-arms", "fifty-arms", "empty"]
    assert picker.value == "two-arms"

    table = _arm_table(at)
    assert table["arm"].tolist() == ARMS2
    assert table["decisions"].tolist() == [50, 51]
    assert table["pulls"].tolist() == [50, 50]
    assert table["conversions"].tolist() == [0.0, 1.0]
    assert table["traffic_share"].tolist() == pytest.approx([50 / 101, 51 / 101])
    assert table["mean"].tolist() == pytest.approx([0.0, 0.02])

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Strategy"] == "thompson"
    assert metrics["Decisions served"] == "101"
    assert metrics["Rewards observed"] == "100"
    assert metrics["Leading arm"] == "green-button"

    titles = _chart_titles(at)
    assert titles == [
        "Conversion rate with 95% credible interval",
        "Traffic share per arm",
        "Conversion rate per hour",
        "Traffic share per hour",
        "Cumulative reward (black: all arms)",
    ]
    # the conversion-rate chart ships exactly the API's points, plus the two markers
    conv = _charts(at)[2]
    frames = _chart_rows(conv)
    points = next(f for f in frames if "conversion_rate" in f.columns)
    assert points["arm"].tolist() == ["blue-button", "green-button"] * 2
    assert points["conversion_rate"].tolist() == pytest.approx([0.2, 0.1, 0.1, 0.3])
    markers = next(f for f in frames if "kind" in f.columns)
    assert markers["label"].tolist() == ["blue-button → green-button", "green-button (glr)"]
    # the time-series query asked for hours over the default window
    path, query = next(q for q in api.queries if q[0].endswith("/timeseries"))
    assert path == "/experiments/two-arms/timeseries"
    assert query["bucket"] == ["hour"]
    assert "from" in query


def test_fifty_arms(api: FakeApi) -> None:
    at = _run()
    at.selectbox(key="experiment").set_value("fifty-arms")
    _run(at)
    assert not at.error
    table = _arm_table(at)
    assert len(table) == 50
    assert table["arm"].tolist() == ARMS50
    assert len(_charts(at)) == 5
    share = _chart_rows(_charts(at)[3])[0]
    assert sorted(set(share["arm"])) == ARMS50


def test_empty_experiment_shows_info_and_zero_table(api: FakeApi) -> None:
    at = _run()
    at.selectbox(key="experiment").set_value("empty")
    _run(at)
    assert not at.error
    assert any("No decisions or rewards yet" in i.value for i in at.info)
    table = _arm_table(at)
    assert table["arm"].tolist() == ["a", "b"]
    assert table["decisions"].tolist() == [0, 0]
    assert not _charts(at)


def test_experiment_deep_link_via_query_param(api: FakeApi) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["experiment"] = "fifty-arms"
    _run(at)
    assert at.selectbox(key="experiment").value == "fifty-arms"


def test_minute_buckets_rejected_fall_back_to_hours(api: FakeApi) -> None:
    """Scenario: an API without bucket=minute (422). We expect a warning and the hourly
    charts, not an error."""
    api.reject_minute = True
    at = _run()
    at.radio(key="bucket").set_value("minute")
    _run(at)
    assert not at.error
    assert any("per-minute" in w.value for w in at.warning)
    assert "Conversion rate per hour" in _chart_titles(at)
    buckets = [q["bucket"] for p, q in api.queries if p.endswith("/timeseries")]
    assert buckets[-2:] == [["minute"], ["hour"]]


def test_minute_buckets_when_supported(api: FakeApi) -> None:
    at = _run()
    at.radio(key="bucket").set_value("minute")
    _run(at)
    assert not at.warning
    assert "Conversion rate per minute" in _chart_titles(at)
    assert at.selectbox(key="window_minute").value == "last 60 minutes"


def test_api_without_timeseries_endpoint_still_shows_the_table(api: FakeApi) -> None:
    del api.routes["/experiments/two-arms/timeseries"]
    at = _run()
    assert not at.error
    assert any("no `/experiments/{id}/timeseries` endpoint" in i.value for i in at.info)
    assert len(_arm_table(at)) == 2
    assert len(_charts(at)) == 2  # the current-state charts


def test_api_failing_mid_session_is_an_error(api: FakeApi) -> None:
    api.routes["/experiments/two-arms/stats"] = (503, {"detail": "state store unavailable"})
    at = _run()
    assert len(at.error) == 1
    assert "503" in at.error[0].value
    assert "state store unavailable" in at.error[0].value


def test_auto_refresh_toggle(api: FakeApi) -> None:
    at = _run()
    assert at.toggle(key="auto_refresh").value is True
    at.toggle(key="auto_refresh").set_value(False)
    _run(at)
    assert at.select_slider(key="refresh_s").disabled


# --------------------------------------------------------------------------- playground


def _playground(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("MAB_API_URL", f"http://127.0.0.1:{free_port()}")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["tab"] = "Simulator playground"
    at.session_state["sim_runs"] = 2
    at.session_state["sim_strategies"] = ["thompson", "ucb1"]
    at.session_state["sim_run_horizon_playground_2000"] = 300
    return at


def test_simulator_runs_a_tiny_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _run(_playground(monkeypatch))
    assert not at.error, [e.value for e in at.error]  # live tab (API down) did not run
    summary = _summary(at)
    assert sorted(summary["strategy"]) == ["thompson", "ucb1"]
    assert at.subheader[0].value == "2 runs x 300 steps"
    titles = _chart_titles(at)
    assert titles[:2] == ["Cumulative regret", "True rates (drift schedule)"]
    assert sorted(titles[2:]) == ["Arm selection: thompson", "Arm selection: ucb1"]
    regret = next(f for f in _chart_rows(_charts(at)[0]) if "regret_mean" in f.columns)
    assert regret["step"].max() == 300
    assert "mab simulate --scenario playground.json --strategy thompson" in at.code[0].value


def test_simulator_loads_a_bundled_scenario_file(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _playground(monkeypatch)
    at.session_state["sim_source"] = "Scenario file"
    at.session_state["sim_file"] = "abrupt_rotation_3arms"
    at.session_state["sim_run_horizon_abrupt_rotation_3arms_5000"] = 400
    _run(at)
    assert not at.error
    assert len(_summary(at)) == 2
    assert "--scenario scenarios/abrupt_rotation_3arms.json" in at.code[0].value


@pytest.mark.parametrize(
    ("field", "value", "starts", "says"),
    [
        ("sim_arms", "a, a", "**Bad scenario.**", "unique"),
        ("sim_params_ucb1", '{"c": -1}', "ucb1:", "strategy_params.c"),
    ],
    ids=["bad-editor-input", "bad-params"],
)
def test_simulator_bad_input_is_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, starts: str, says: str
) -> None:
    at = _playground(monkeypatch)
    at.session_state[field] = value
    _run(at)
    assert len(at.error) == 1
    assert at.error[0].value.startswith(starts)
    assert says in at.error[0].value


def test_simulator_budget_caps_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _playground(monkeypatch)
    at.session_state["sim_arms"] = "50"
    at.session_state["sim_runs"] = 500
    at.session_state["sim_strategies"] = ["epsilon_greedy"]
    at.session_state["sim_run_horizon_playground_2000"] = 1000
    _run(at)
    assert any("running 6" in w.value for w in at.warning)
    assert at.subheader[0].value == "6 runs x 1,000 steps"

"""Dashboard transforms: known API JSON in, exact frames out; charts are valid Vega-Lite.

Also the playground's traced runs, held to the exact numbers of ``bandit_core.simulate``
(``mab simulate``), so the curves the dashboard draws are the CLI's runs.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
import pytest

from bandit_core.simulate import ScenarioError, load_scenario, run_once, run_seed, simulate
from bandit_core.strategies import STRATEGIES, params_for
from dashboard import charts, simulator
from mab_client import Timeseries
from tests.fixtures.stats import stats_of

pytestmark = pytest.mark.unit

H = 3600
T0 = 1_795_795_200  # an hour boundary


def _body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "experiment_id": "cta",
        "bucket": "hour",
        "from": T0,
        "to": T0 + 3 * H,
        "arm_ids": ["blue", "green", "red"],
        "points": [
            # hour 0: blue and green served, red none
            {
                "bucket_start": T0,
                "arm_id": "blue",
                "decisions": 6,
                "rewards": 4,
                "reward_sum": 1.0,
                "conversion_rate": 0.25,
                "traffic_share": 0.75,
            },
            {
                "bucket_start": T0,
                "arm_id": "green",
                "decisions": 2,
                "rewards": 0,
                "reward_sum": 0.0,
                "conversion_rate": None,
                "traffic_share": 0.25,
            },
            # hour 1: only red
            {
                "bucket_start": T0 + H,
                "arm_id": "red",
                "decisions": 5,
                "rewards": 5,
                "reward_sum": 3.0,
                "conversion_rate": 0.6,
                "traffic_share": 1.0,
            },
            # hour 2: a late reward for blue, no decision at all in that hour
            {
                "bucket_start": T0 + 2 * H,
                "arm_id": "blue",
                "decisions": 0,
                "rewards": 1,
                "reward_sum": 1.0,
                "conversion_rate": 1.0,
                "traffic_share": None,
            },
        ],
        "change_points": [{"ts": T0 + H + 90.5, "arm_id": "red", "detector": "glr"}],
        "winner_changes": [{"bucket_start": T0 + H, "from_arm": "blue", "to_arm": "red"}],
    }
    body.update(over)
    return body


def _ts(**over: Any) -> Timeseries:
    return Timeseries.model_validate(_body(**over))


def _t(seconds: float) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s", tz="UTC")


# --------------------------------------------------------------------------- arm table


def test_beta_interval_normal_approximation_matches_beta_moments() -> None:
    """Scenario: 30 conversions out of 100 rewards. We expect the interval of
    Beta(31, 71) (mean 0.3039, sd 0.0453) to within the normal approximation."""
    lo, hi = charts.beta_interval(30, 100)
    a, b = 31.0, 71.0
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    if charts._BETA_PPF is None:
        assert lo == pytest.approx(mean - 1.959964 * sd, abs=1e-6)
        assert hi == pytest.approx(mean + 1.959964 * sd, abs=1e-6)
    else:  # exact quantiles are within ~1 point of the approximation
        assert lo == pytest.approx(mean - 1.96 * sd, abs=0.01)
        assert hi == pytest.approx(mean + 1.96 * sd, abs=0.01)


def test_beta_interval_is_clipped_and_handles_no_data() -> None:
    lo, hi = charts.beta_interval(0, 0)
    assert 0.0 <= lo < hi <= 1.0
    lo, hi = charts.beta_interval(5, 5)
    assert hi == 1.0 or hi < 1.0
    assert 0.0 <= lo < hi <= 1.0
    # a reward sum above the pulls (bad data) is clamped, never a crash
    assert charts.beta_interval(9, 5) == charts.beta_interval(5, 5)


def test_arm_table_exact_rows() -> None:
    stats = stats_of(
        [
            ("blue", 10, 3.0, 12, 0.25),
            ("green", 4, 2.0, 8, 0.75),
            ("red", 0, 0.0, 0, 0.0),
        ]
    )
    table = charts.arm_table(stats)
    assert list(table.columns) == charts.ARM_TABLE_COLUMNS
    assert table["arm"].tolist() == ["blue", "green", "red"]
    assert table["decisions"].tolist() == [12, 8, 0]
    assert table["units"].tolist() == [0, 0, 0]  # requests without unit ids
    assert table["traffic_share"].tolist() == [0.6, 0.4, 0.0]
    assert table["propensity"].tolist() == [0.25, 0.75, 0.0]
    assert table["pulls"].tolist() == [10, 4, 0]
    assert table["conversions"].tolist() == [3.0, 2.0, 0.0]
    assert table["mean"].iloc[0] == pytest.approx(0.3)
    assert table["mean"].iloc[1] == pytest.approx(0.5)
    assert math.isnan(table["mean"].iloc[2])  # no reward yet: unknown, not 0 %
    for i, (s, n) in enumerate([(3.0, 10), (2.0, 4), (0.0, 0)]):
        assert (table["ci_low"].iloc[i], table["ci_high"].iloc[i]) == charts.beta_interval(s, n)
    # the posterior mean (1+s)/(2+n): green 3/6 beats blue 4/12; red has no rewards
    assert charts.leading_arm(table) == "green"


def test_arm_table_without_any_data() -> None:
    table = charts.arm_table(stats_of([("a", 0, 0.0, 0, 0.5), ("b", 0, 0.0, 0, 0.5)]))
    assert len(table) == 2
    assert table["traffic_share"].isna().all()
    assert table["mean"].isna().all()
    assert charts.leading_arm(table) is None


def test_arm_table_fifty_arms() -> None:
    arms = [(f"arm-{k}", 100, k / 2, 2 * k + 1, 1 / 50) for k in range(50)]
    table = charts.arm_table(stats_of(arms))
    assert len(table) == 50
    assert table["arm"].tolist() == [f"arm-{k}" for k in range(50)]
    assert table["traffic_share"].sum() == pytest.approx(1.0)
    assert charts.leading_arm(table) == "arm-49"


# --------------------------------------------------------------------------- time series


def test_series_frame_fills_the_grid_exactly() -> None:
    """Scenario: points for 3 hours, some (hour, arm) pairs missing.
    We expect a full 3 x 3 grid: missing counts 0, missing conversion rates NaN,
    missing traffic shares 0 where the hour served decisions and NaN where it served none."""
    df = charts.series_frame(_ts())
    nan = float("nan")
    expected = pd.DataFrame(
        {
            "time": pd.Series([_t(T0)] * 3 + [_t(T0 + H)] * 3 + [_t(T0 + 2 * H)] * 3).astype(
                "datetime64[ns, UTC]"
            ),
            "arm": ["blue", "green", "red"] * 3,
            "decisions": [6, 2, 0, 0, 0, 5, 0, 0, 0],
            "rewards": [4, 0, 0, 0, 0, 5, 1, 0, 0],
            "reward_sum": [1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.0, 0.0, 0.0],
            "conversion_rate": [0.25, nan, nan, nan, nan, 0.6, 1.0, nan, nan],
            "traffic_share": [0.75, 0.25, 0.0, 0.0, 0.0, 1.0, nan, nan, nan],
        }
    )
    pd.testing.assert_frame_equal(df, expected, check_dtype=False)
    assert str(df["time"].dtype) == "datetime64[ns, UTC]"
    assert df["decisions"].dtype == "int64"


def test_series_frame_empty() -> None:
    df = charts.series_frame(_ts(points=[], change_points=[], winner_changes=[]))
    assert df.empty
    assert list(df.columns) == charts.SERIES_COLUMNS


def test_series_frame_keeps_an_arm_missing_from_the_config() -> None:
    ts = _ts(arm_ids=["blue", "green"])
    df = charts.series_frame(ts)
    assert charts.arm_order(ts) == ["blue", "green", "red"]
    assert df["arm"].tolist()[:3] == ["blue", "green", "red"]


def test_cumulative_frame_running_totals() -> None:
    cum = charts.cumulative_frame(charts.series_frame(_ts()))
    assert cum["arm"].tolist() == ["blue", "green", "red"] * 3
    assert cum["cumulative_reward"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 3.0, 2.0, 0.0, 3.0]
    assert cum["cumulative_decisions"].tolist() == [6, 2, 0, 6, 2, 5, 6, 2, 5]


def test_markers_frame_exact() -> None:
    m = charts.markers_frame(_ts())
    expected = pd.DataFrame(
        {
            "time": pd.Series([_t(T0 + H), _t(T0 + H + 90.5)]).astype("datetime64[ns, UTC]"),
            "kind": [charts.WINNER_CHANGE, charts.CHANGE_POINT],
            "label": ["blue → red", "red (glr)"],
        }
    )
    pd.testing.assert_frame_equal(m, expected, check_dtype=False)


def test_markers_frame_tolerates_missing_marker_lists() -> None:
    body = _body()
    del body["change_points"]
    del body["winner_changes"]
    m = charts.markers_frame(Timeseries.model_validate(body))
    assert m.empty
    assert list(m.columns) == charts.MARKER_COLUMNS


def _layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("layer", [spec]))


def _data_of(spec: dict[str, Any], layer: dict[str, Any]) -> list[dict[str, Any]]:
    name = layer.get("data", spec.get("data", {})).get("name")
    rows: list[dict[str, Any]] = spec["datasets"][name]
    return rows


def test_time_series_charts_carry_data_and_markers() -> None:
    ts = _ts()
    series = charts.series_frame(ts)
    markers = charts.markers_frame(ts)
    arms = charts.arm_order(ts)
    spec = charts.conversion_rate_chart(series, markers, arms).to_dict()
    line, rules = _layers(spec)
    assert line["mark"]["type"] == "line"
    rows = _data_of(spec, line)
    # only the buckets with a conversion rate are drawn (gaps, not zeros)
    assert [(r["arm"], r["conversion_rate"]) for r in rows] == [
        ("blue", 0.25),
        ("red", 0.6),
        ("blue", 1.0),
    ]
    assert rules["mark"]["type"] == "rule"
    assert [r["label"] for r in _data_of(spec, rules)] == ["blue → red", "red (glr)"]
    assert line["encoding"]["color"]["scale"]["domain"] == ["blue", "green", "red"]

    spec = charts.traffic_share_chart(series, markers, arms).to_dict()
    area = _layers(spec)[0]
    assert area["mark"]["type"] == "area"
    assert area["encoding"]["y"]["stack"] == "zero"
    assert [r["traffic_share"] for r in _data_of(spec, area)] == [0.75, 0.25, 0.0, 0.0, 0.0, 1.0]

    spec = charts.cumulative_reward_chart(charts.cumulative_frame(series), markers, arms).to_dict()
    assert len(_layers(spec)) == 2  # (per-arm lines + total) and the markers
    json.dumps(spec)  # serialisable as-is


def test_charts_without_markers_have_no_rule_layer() -> None:
    ts = _ts(change_points=[], winner_changes=[])
    series = charts.series_frame(ts)
    spec = charts.conversion_rate_chart(series, charts.markers_frame(ts), ["blue"]).to_dict()
    assert "layer" not in spec
    assert spec["mark"]["type"] == "line"


def test_current_charts_with_fifty_arms() -> None:
    arms = [(f"arm-{k}", 100, k / 2, 2 * k + 1, 1 / 50) for k in range(50)]
    table = charts.arm_table(stats_of(arms))
    spec = charts.current_rate_chart(table).to_dict()
    assert spec["layer"][0]["encoding"]["x"]["sort"] == [f"arm-{k}" for k in range(50)]
    share = charts.current_share_chart(table).to_dict()
    rows = next(iter(share["datasets"].values()))
    assert len(rows) == 100  # served so far + next decision, per arm
    assert {r["measure"] for r in rows} == {"served so far", "next decision"}


# --------------------------------------------------------------------------- playground


def test_trace_matches_run_once_for_every_strategy() -> None:
    """The playground's curves come from the exact runs `mab simulate` makes."""
    sc = simulator.with_horizon(load_scenario(simulator.SCENARIO_DIR / "daily_story.json"), 1500)
    env = sc.environments[0]
    marks = simulator.checkpoints(env.horizon, 40)
    for name in STRATEGIES:
        seed = run_seed(7, 3)
        defaults = params_for(name, {})
        trace = simulator.trace_run(env, name, defaults, seed, marks)
        assert trace.result == run_once(env, name, defaults, seed), name
        assert trace.regret[-1] == trace.result.regret
        assert sum(sum(p) for p in trace.picks) == env.horizon
        assert len(trace.regret) == len(marks) == 40


def test_run_playground_summary_equals_simulate() -> None:
    sc = simulator.with_horizon(
        load_scenario(simulator.SCENARIO_DIR / "abrupt_rotation_3arms.json"), 600
    )
    res = simulator.run_playground(
        sc, [("thompson", {}), ("epsilon_greedy", {"epsilon": 0.2})], 3, 11
    )
    cli = [
        simulate(sc, "thompson", {}, runs=3, seed=11),
        simulate(sc, "epsilon_greedy", {"epsilon": 0.2}, runs=3, seed=11),
    ]
    assert res.summary.to_dict("records") == [c.to_dict() for c in cli]
    # curves: one row per checkpoint and strategy; shares sum to 1 per step
    assert len(res.regret) == 2 * len(simulator.checkpoints(600))
    per_step = res.selection.groupby(["strategy", "step"])["share"].sum()
    assert per_step.to_numpy() == pytest.approx(1.0)
    final = res.regret.groupby("strategy")["regret_mean"].last()
    assert final["thompson"] == pytest.approx(cli[0].regret_mean)
    assert res.true_means["step"].tolist() == [0, 0, 0, 600, 600, 600]  # first segment only


def test_scenario_from_table_round_trips_through_the_file_format() -> None:
    arms = ["a", "b"]
    table = pd.DataFrame({"start": [500, 0, None], "a": [0.2, 0.1, None], "b": [0.05, 0.3, None]})
    sc = simulator.scenario_from_table(arms, table, 1000, period=None)
    env = sc.environments[0]
    assert [s.start for s in env.segments] == [0, 500]  # blank row dropped, rows sorted
    assert env.segments[0].means == (0.1, 0.3)
    again = simulator.scenario_from_bytes(simulator.scenario_json(sc).encode(), "x.json")
    assert again.environments == sc.environments


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"start": [0], "a": [0.1], "b": [None]}), "no rate for arm 'b'"),
        (pd.DataFrame({"start": [0], "a": [0.1], "b": [1.5]}), "Bernoulli rates"),
        (pd.DataFrame({"start": [5], "a": [0.1], "b": [0.2]}), "first segment must start at 0"),
        (pd.DataFrame({"start": [0], "a": [0.1]}), "no column for arms ['b']"),
    ],
)
def test_scenario_from_table_errors(table: pd.DataFrame, message: str) -> None:
    with pytest.raises(ScenarioError, match=None) as exc:
        simulator.scenario_from_table(["a", "b"], table, 100)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"horizon": 10, "arms": ["a"], "segments": []}', "segments"),
    ],
)
def test_bad_uploaded_scenario_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        simulator.scenario_from_bytes(data, "upload.json")
    assert message in str(exc.value)
    assert str(exc.value).startswith("upload.json")


def test_arm_names_and_budget() -> None:
    assert simulator.parse_arm_names("blue, green red") == ["blue", "green", "red"]
    assert simulator.parse_arm_names("50")[-1] == "arm-50"
    assert simulator.parse_arm_names("\u00b2") == ["\u00b2"]  # a name, not a count
    with pytest.raises(ScenarioError, match="unique"):
        simulator.parse_arm_names("a, a")
    sc = simulator.scenario_from_table(
        simulator.parse_arm_names("50"),
        simulator.default_segments(simulator.parse_arm_names("50"), 1000),
        1000,
    )
    assert simulator.arm_steps(sc, 2, 3) == 2 * 1000 * 3 * 50
    assert simulator.capped_runs(sc, 100, 3, budget=300_000) == 2
    assert simulator.capped_runs(sc, 100, 3, budget=1) == 1


def test_params_are_validated_like_the_api() -> None:
    assert simulator.parse_params("epsilon_greedy", '{"epsilon": 0.2}') == {"epsilon": 0.2}
    assert simulator.parse_params("thompson", "  ") == {}
    with pytest.raises(ValueError, match="epsilon"):
        simulator.parse_params("epsilon_greedy", '{"epsilon": 7}')
    with pytest.raises(ValueError, match="not JSON"):
        simulator.parse_params("thompson", "{")
    cmd = simulator.cli_command("scenarios/x.json", "epsilon_greedy", {"epsilon": 0.2}, 5, 1)
    assert cmd == (
        "mab simulate --scenario scenarios/x.json --strategy epsilon_greedy "
        "--params '{\"epsilon\":0.2}' --runs 5 --seed 1"
    )

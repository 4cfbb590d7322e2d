"""Continuous rewards: value statistics in the fold, the samplers, the revenue simulator."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from bandit_core.adaptive import decayed, observe
from bandit_core.simulate import (
    ScenarioError,
    learns_value,
    load_scenario,
    parse_scenario,
    run_once,
    strategy_names,
)
from bandit_core.state import ArmStats, ExperimentState
from bandit_core.strategies import (
    STRATEGIES,
    InvalidParamsError,
    get_strategy,
    make_rng,
    params_for,
)
from bandit_core.strategies._value import decayed_value_counts, value_counts

pytestmark = pytest.mark.unit

CONTINUOUS = sorted(n for n, s in STRATEGIES.items() if "continuous" in s.reward_types)
SAMPLERS = ["revenue_thompson", "gaussian_thompson", "discounted_revenue_thompson"]
SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
IDS = ["cheap", "dear"]


def store(seed: int = 1, visitors: int = 3000) -> list[ArmStats]:
    """Arm 0 converts more (8% x 20 = 1.6 per visitor); arm 1 earns more (5% x 60 = 3)."""
    rng = random.Random(seed)
    arms = [ArmStats(), ArmStats()]
    for t in range(visitors):
        for s, conv, value in ((arms[0], 0.08, 20.0), (arms[1], 0.05, 60.0)):
            r = value * rng.lognormvariate(-0.125, 0.5) if rng.random() < conv else 0.0
            observe(s, r, float(t))
    return arms


def test_the_continuous_strategies_are_registered() -> None:
    assert CONTINUOUS == [
        "discounted_revenue_thompson",
        "epsilon_greedy",
        "gaussian_thompson",
        "revenue_thompson",
        "ucb_v",
    ]
    assert "binary" in get_strategy("epsilon_greedy").reward_types
    assert "binary" not in get_strategy("revenue_thompson").reward_types


@pytest.mark.parametrize("name", CONTINUOUS)
def test_picks_the_better_revenue_arm_not_the_better_converting_one(name: str) -> None:
    arms = store()
    strategy = get_strategy(name)
    params = params_for(name, {})
    rng = make_rng(7)
    picks = [strategy.choose(IDS, arms, params, rng, 3000.0) for _ in range(200)]
    assert picks.count(1) >= 170
    p = strategy.propensities(IDS, arms, params, make_rng(3), 3000.0, 500)
    assert p[1] > 0.8
    # and binary Thompson on the same rewards is no judge of it: on the conversion
    # indicator arm 0 is better
    assert arms[0].conv > arms[1].conv


@pytest.mark.parametrize("name", CONTINUOUS)
def test_propensities_sum_to_one_and_never_vanish(name: str) -> None:
    arms = [*store(visitors=400), ArmStats()]
    ids = [*IDS, "new"]
    strategy = get_strategy(name)
    params = params_for(name, {})
    p = strategy.propensities(ids, arms, params, make_rng(1), 400.0, 300)
    assert math.isclose(sum(p), 1.0, rel_tol=1e-9)
    assert all(x >= 0.0 for x in p)
    if name in SAMPLERS:
        assert all(x > 0.0 for x in p)
    index, q = strategy.choose_with_propensity(ids, arms, params, make_rng(2), 400.0)
    assert 0 <= index < 3
    assert 0.0 < q <= 1.0


@pytest.mark.parametrize("name", SAMPLERS)
def test_identical_arms_get_exactly_uniform_propensities(name: str) -> None:
    strategy = get_strategy(name)
    params = params_for(name, {})
    fresh = [ArmStats() for _ in range(4)]
    assert strategy.propensities(list("abcd"), fresh, params, make_rng(1), 0.0) == [0.25] * 4
    picks = {strategy.choose(list("abcd"), fresh, params, make_rng(s), 0.0) for s in range(60)}
    assert picks == {0, 1, 2, 3}


@pytest.mark.parametrize("name", CONTINUOUS)
def test_seeded_choices_repeat(name: str) -> None:
    arms = store(visitors=300)
    strategy = get_strategy(name)
    params = params_for(name, {"seed": 5})

    def run() -> list[int]:
        rng = make_rng(5)
        return [strategy.choose(IDS, arms, params, rng, 300.0) for _ in range(50)]

    assert run() == run()


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("revenue_thompson", {"prior_log_sd": 0.0}, "prior_log_sd"),
        ("revenue_thompson", {"value_prior_strength": -1.0}, "value_prior_strength"),
        ("revenue_thompson", {"prior_alpha": 0.0}, "prior_alpha"),
        ("discounted_revenue_thompson", {"half_life": 1.0}, "half_life"),
        ("gaussian_thompson", {"prior_strength": 0.0}, "prior_strength"),
        ("gaussian_thompson", {"prior_strength": "1"}, "prior_strength"),
        ("ucb_v", {"scale": -0.1}, "scale"),
        ("ucb_v", {"zeta": 0.0}, "zeta"),
        ("ucb_v", {"c": 1.0}, "c"),
    ],
)
def test_bad_params_name_the_field(name: str, params: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidParamsError) as info:
        params_for(name, params)
    assert f"strategy_params.{field}:" in str(info.value)


def test_defaults_and_half_life() -> None:
    assert params_for("discounted_revenue_thompson", {}).half_life == 2048.0  # type: ignore[attr-defined]
    assert params_for("ucb_v", {"scale": 2}).as_given() == {"scale": 2.0}


def test_ucb_v_tries_every_arm_first() -> None:
    arms = [*store(visitors=50), ArmStats()]
    ucbv = get_strategy("ucb_v")
    assert ucbv.propensities([*IDS, "new"], arms, params_for("ucb_v", {}), make_rng(1), 0.0) == [
        0.0,
        0.0,
        1.0,
    ]


# --- value statistics in the fold ---------------------------------------------------


def test_binary_rewards_keep_no_value_statistics_and_their_snapshot_bytes() -> None:
    s = ArmStats()
    for t in range(100):
        observe(s, float(t % 4 == 0), float(t))
    assert not s.valued
    assert len(s.to_list()) == 19
    counts = value_counts(s)
    assert (counts.n, counts.conv, counts.log_sum) == (100.0, 25.0, 0.0)
    assert decayed_value_counts(s, 64.0, 100.0).conv == _decayed_sum(s, 64.0, 100.0)


def _decayed_sum(s: ArmStats, half_life: float, now: float) -> float:
    return decayed(s, half_life, now)[1]


def test_the_first_order_value_materialises_exact_statistics() -> None:
    rewards = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 42.5, 0.0, 0.5, 19.0]
    late = ArmStats()
    for t, r in enumerate(rewards):
        observe(late, r, float(t * 10))
    assert late.valued
    assert late.conv == sum(1 for r in rewards if r > 0)
    logs = [math.log(r) for r in rewards if r > 0]
    assert late.log_sum == pytest.approx(sum(logs))
    assert late.log_sq_sum == pytest.approx(sum(x * x for x in logs))
    # decayed conversions: the same ladder as a count of the indicator
    ref = ArmStats()
    for t, r in enumerate(rewards):
        observe(ref, 1.0 if r > 0 else 0.0, float(t * 10))
    assert late.dconv == pytest.approx(ref.dsum)
    assert decayed_value_counts(late, 100.0, 95.0).conv == pytest.approx(
        _decayed_sum(ref, 100.0, 95.0)
    )


def test_value_snapshot_round_trips_and_old_layouts_load() -> None:
    s = ArmStats()
    for t, r in enumerate([0.0, 12.0, 0.0, 30.0]):
        observe(s, r, float(t))
    layout = s.to_list()
    assert len(layout) == 21
    assert layout[19] == 0
    assert ArmStats.from_list(layout) == s
    state = ExperimentState("e", arms={"a": s, "b": ArmStats()})
    again = ExperimentState.from_snapshot(state.snapshot_bytes(), "e")
    assert again.arms == state.arms
    old = ArmStats.from_list([*layout[:19], 3])  # a 20-value snapshot from before
    assert old.units == 3
    assert not old.valued
    with pytest.raises(ValueError, match="value ladder"):
        ArmStats.from_list([*layout[:20], [1, 0.0, 0.0, [0.0], [0.0], [0.0]]])


def test_glr_detector_sees_order_values_as_conversions() -> None:
    s = ArmStats()
    for t in range(400):
        observe(s, 250.0 if t % 5 == 0 else 0.0, float(t))
    assert s.cp_sum <= s.cp_pulls
    assert s.change_points == 0
    # order values do not raise alarms by their size; a conversion-rate drop does
    for t in range(400, 1200):
        observe(s, 0.0, float(t))
    assert s.change_points >= 1


# --- the revenue simulator ----------------------------------------------------------


def revenue_env(**overrides: object) -> dict[str, object]:
    env: dict[str, object] = {
        "horizon": 300,
        "reward": "revenue",
        "arms": ["A", "B"],
        "segments": [
            {
                "start": 0,
                "conversion": [0.2, 0.1],
                "order_value": [{"mean": 10.0, "sd": 5.0}, {"mean": 50.0, "sd": 20.0}],
            }
        ],
    }
    env.update(overrides)
    return env


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"segments": [{"start": 0, "means": [0.1, 0.2]}]}, "not means"),
        ({"segments": [{"start": 0, "conversion": [0.1, 0.2]}]}, "no order_value"),
        (
            {
                "segments": [
                    {"start": 0, "conversion": [0.1], "order_value": [{"mean": 1, "sd": 1}]}
                ]
            },
            "1 conversion for 2 arms",
        ),
        (
            {
                "segments": [
                    {
                        "start": 0,
                        "conversion": [1.5, 0.1],
                        "order_value": [{"mean": 1, "sd": 1}, {"mean": 1, "sd": 1}],
                    }
                ]
            },
            "conversion must be rates in [0, 1]",
        ),
        (
            {
                "segments": [
                    {
                        "start": 0,
                        "conversion": [0.5, 0.1],
                        "order_value": [{"mean": 0, "sd": 1}, {"mean": 1, "sd": 1}],
                    }
                ]
            },
            "order_value.0.mean",
        ),
        ({"reward": "profit"}, "reward"),
        ({"reward": "bernoulli"}, 'need "reward": "revenue"'),
    ],
)
def test_bad_revenue_scenarios_say_why(change: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(revenue_env(**change))
    assert message in str(info.value)


def test_revenue_regret_and_what_each_strategy_learns() -> None:
    env = parse_scenario(revenue_env()).environments[0]
    assert env.means_by_step()[0] == pytest.approx((2.0, 5.0))
    seen: dict[str, list[int]] = {}

    def recorder(name: str) -> Callable[[int, int, float], None]:
        def on_step(t: int, i: int, regret: float) -> None:
            seen.setdefault(name, []).append(i)

        return on_step

    for name in ("thompson", "revenue_thompson"):
        result = run_once(env, name, params_for(name, {}), 11, on_step=recorder(name))
        served_a = seen[name].count(0)
        assert result.regret == pytest.approx(3.0 * served_a)
    assert learns_value("revenue_thompson")
    assert not learns_value("thompson")
    # a seeded run repeats
    assert run_once(env, "ucb_v", params_for("ucb_v", {}), 3) == run_once(
        env, "ucb_v", params_for("ucb_v", {}), 3
    )


def test_strategy_all_runs_continuous_ones_only_on_revenue_scenarios() -> None:
    bernoulli = load_scenario(SCENARIOS / "abrupt_rotation_3arms.json")
    revenue = load_scenario(SCENARIOS / "revenue_conversion_vs_value.json")
    assert "revenue_thompson" not in strategy_names(bernoulli)
    assert "epsilon_greedy" in strategy_names(bernoulli)
    assert strategy_names(revenue) == list(STRATEGIES)


@pytest.mark.parametrize("name", ["revenue_conversion_vs_value", "revenue_winner_changes"])
def test_shipped_revenue_scenarios_disagree_on_conversion_and_revenue(name: str) -> None:
    env = load_scenario(SCENARIOS / f"{name}.json").environments[0]
    for seg in env.segments:
        assert seg.conversion is not None
        best_conversion = max(range(3), key=lambda i: seg.conversion[i])  # type: ignore[index]
        best_revenue = max(range(3), key=lambda i: seg.values[i])
        assert best_conversion != best_revenue
    winners = {max(range(3), key=lambda i: seg.values[i]) for seg in env.segments}
    assert len(winners) == len(env.segments)


def test_bernoulli_scenarios_dump_as_before() -> None:
    path = SCENARIOS / "abrupt_rotation_3arms.json"
    dumped = load_scenario(path).model_dump(mode="json")["environments"][0]
    assert "reward" not in dumped
    assert all(set(seg) == {"start", "means"} for seg in dumped["segments"])
    revenue = load_scenario(SCENARIOS / "revenue_winner_changes.json").model_dump(mode="json")
    assert json.loads(json.dumps(revenue))["environments"][0]["reward"] == "revenue"


def test_cli_runs_every_strategy_on_a_revenue_scenario(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mab_cli.main import app

    path = tmp_path / "store.json"
    path.write_text(json.dumps(revenue_env(horizon=60)))
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["simulate", "--scenario", str(path), "--strategy", "all", "--runs", "1", "--json"],
    )
    assert res.exit_code == 0, res.output
    names = [json.loads(line)["strategy"] for line in res.stdout.strip().splitlines()]
    assert names == list(STRATEGIES)
    path.write_text(json.dumps(revenue_env(segments=[{"start": 0, "means": [0.1, 0.2]}])))
    bad = runner.invoke(app, ["simulate", "--scenario", str(path), "--strategy", "all"])
    assert bad.exit_code == 2
    assert "conversion and order_value, not means" in bad.output


@pytest.mark.parametrize("name", ["revenue_thompson", "gaussian_thompson"])
def test_batch_choices_follow_the_policy(name: str) -> None:
    """The decider serves pre-drawn batches: their choice shares are the policy's
    propensities (Monte Carlo, 20,000 draws each), on a store where the arms differ."""
    stats = store(seed=3, visitors=60)
    strategy = STRATEGIES[name]
    params = params_for(name, None)
    sampler = strategy.batch_sampler(IDS, stats, params, 0.0)
    assert sampler is not None
    choices = sampler(random.Random(5), 20_000)
    shares = [choices.count(i) / len(choices) for i in range(len(IDS))]
    expected = strategy.propensities(IDS, stats, params, random.Random(6), 0.0, 20_000)
    assert max(expected) < 0.9  # not a foregone choice: the comparison means something
    assert shares == pytest.approx(expected, abs=0.02)
    with pytest.raises(ValueError, match="n must be"):
        sampler(random.Random(5), 0)


def test_the_discounted_sampler_draws_per_decision() -> None:
    """Its posteriors move with the clock: no pre-drawn batches."""
    strategy = STRATEGIES["discounted_revenue_thompson"]
    params = params_for("discounted_revenue_thompson", None)
    assert strategy.batch_sampler(IDS, store(), params, 0.0) is None

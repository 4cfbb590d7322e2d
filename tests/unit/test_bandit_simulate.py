"""The simulator: scenario validation, determinism, and that it folds like the service."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bandit_core.adaptive import observe, restart_others
from bandit_core.fold import fold_batch
from bandit_core.scenario_gen import original_convergence_scenario, random_piecewise_environment
from bandit_core.simulate import (
    Environment,
    ScenarioError,
    load_scenario,
    parse_scenario,
    run_once,
    simulate,
)
from bandit_core.state import ArmStats, ExperimentState
from bandit_core.strategies import params_for
from schemas.events import ExperimentCreated, RewardObserved
from tests.fixtures.events import config_of

pytestmark = pytest.mark.unit

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
TINY = {
    "horizon": 300,
    "arms": ["a", "b"],
    "segments": [{"start": 0, "means": [0.8, 0.1]}, {"start": 150, "means": [0.1, 0.8]}],
    "period": None,
}


def test_bundled_scenarios_load() -> None:
    files = sorted(SCENARIOS.glob("*.json"))
    assert len(files) >= 4
    for f in files:
        sc = load_scenario(f)
        assert sc.environments
    original = load_scenario(SCENARIOS / "original_convergence.json")
    assert len(original.environments) == 20
    assert all(e.horizon == 2000 and len(e.arms) == 4 for e in original.environments)


#: Best-arm gaps of the original project's 20 samples as its ``convergence_test_results.md``
#: lists them.
ORIGINAL_GAPS = (
    0.296, 0.205, 0.233, 0.203, 0.157, 0.199, 0.184, 0.197, 0.181, 0.301,
    0.329, 0.233, 0.211, 0.406, 0.272, 0.220, 0.207, 0.267, 0.267, 0.286,
)  # fmt: skip


def test_original_benchmark_file_is_the_original_draw() -> None:
    """The bundled file is what the generator draws, and the draw has the original gaps."""
    bundled = load_scenario(SCENARIOS / "original_convergence.json")
    drawn = original_convergence_scenario()
    assert bundled.environments == drawn.environments
    gaps = []
    for env in drawn.environments:
        top, second = sorted(env.segments[0].values, reverse=True)[:2]
        gaps.append(round(top - second, 3))
    assert tuple(gaps) == ORIGINAL_GAPS


def test_random_piecewise_problems_are_valid_and_reproducible() -> None:
    for seed in range(30):
        env = random_piecewise_environment(seed)
        assert env == random_piecewise_environment(seed)
        assert 2 <= len(env.arms) <= 8
        assert 5000 <= env.horizon <= 20000
        assert 2 <= len(env.segments) <= 5
        starts = [s.start for s in env.segments] + [env.horizon]
        assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.15 * env.horizon
        bests = [max(range(len(env.arms)), key=lambda i: s.values[i]) for s in env.segments]
        assert all(a != b for a, b in itertools.pairwise(bests)), "best arm moves"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"horizon": 0}, "horizon"),
        ({"arms": ["a", "a"]}, "unique"),
        ({"segments": [{"start": 5, "means": [0.1, 0.2]}]}, "start at 0"),
        ({"segments": [{"start": 0, "means": [0.1]}]}, "1 means for 2 arms"),
        ({"segments": [{"start": 0, "means": [0.1, 1.5]}]}, r"\[0, 1\]"),
        ({"period": 100}, "period"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_scenarios_say_why(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario({**TINY, **patch})


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ScenarioError, match="not JSON"):
        load_scenario(bad)


def test_period_wraps_segments() -> None:
    env = Environment.model_validate(
        {
            "horizon": 10,
            "arms": ["a"],
            "segments": [{"start": 0, "means": [0.1]}, {"start": 3, "means": [0.9]}],
            "period": 5,
        }
    )
    assert [m[0] for m in env.means_by_step()] == [0.1, 0.1, 0.1, 0.9, 0.9] * 2


def test_runs_are_deterministic_and_regret_is_bounded() -> None:
    env = parse_scenario(TINY).environments[0]
    params = params_for("glr_thompson", {})
    a = run_once(env, "glr_thompson", params, seed=7)
    assert a == run_once(env, "glr_thompson", params, seed=7)
    assert 0.0 <= a.regret <= 0.7 * env.horizon
    assert 0.0 <= a.best_arm_share_last_10pct <= 1.0


def test_a_run_refuses_another_strategys_params() -> None:
    """glr_thompson's params have every field discounted_thompson reads: passing them
    would silently run other defaults, so a run checks the model once."""
    env = parse_scenario(TINY).environments[0]
    with pytest.raises(TypeError, match="discounted_thompson takes DiscountedThompsonParams"):
        run_once(env, "discounted_thompson", params_for("glr_thompson", {}), seed=7)


def test_simulate_summary_and_workers_agree() -> None:
    sc = parse_scenario(TINY)
    one = simulate(sc, "discounted_thompson", {"half_life": 64}, runs=4, seed=1)
    assert one.runs == 4
    assert one.horizon == 300
    assert one.params == {"half_life": 64.0}
    assert one == simulate(sc, "discounted_thompson", {"half_life": 64}, runs=4, seed=1, workers=2)


def test_simulator_update_equals_the_service_fold() -> None:
    """The simulator's per-step ``observe`` is the fold's: same stats from the same rewards."""
    rng = random.Random(5)
    arms = ("a", "b")
    config = config_of("x", arms, ts=0.0)
    events: list[ExperimentCreated | RewardObserved] = [
        ExperimentCreated(experiment_id="x", ts=0.0, config=config)
    ]
    direct = {a: ArmStats() for a in arms}
    for t in range(500):
        arm = arms[rng.randrange(2)]
        r = float(rng.random() < (0.6 if t < 250 else 0.1))
        events.append(
            RewardObserved(experiment_id="x", event_id=f"e{t}", arm_id=arm, reward=r, ts=t)
        )
        if observe(direct[arm], r, float(t)) is not None:
            restart_others(list(direct.values()), direct[arm])
    res = fold_batch(ExperimentState("x"), events)
    assert res.change_points, "the stream must exercise the detector and global restart"
    folded = res.state
    for a in arms:
        assert folded.arms[a] == direct[a]


def test_cli_json_output(tmp_path: Path) -> None:
    from mab_cli.main import app

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "simulate",
            "--scenario",
            str(path),
            "--strategy",
            "sw_ucb",
            "--runs",
            "2",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(obj) == {
        "strategy",
        "params",
        "runs",
        "horizon",
        "regret_mean",
        "regret_std",
        "reward_mean",
        "best_arm_share_last_10pct",
    }
    bad = runner.invoke(
        app, ["simulate", "--scenario", str(path), "--strategy", "nope", "--workers", "1"]
    )
    assert bad.exit_code == 2


def test_cli_runs_with_the_documented_options_only(tmp_path: Path) -> None:
    """The issue's interface: no ``--workers`` (it defaults to the CPU count)."""
    from mab_cli.main import app

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    res = CliRunner().invoke(
        app,
        ["simulate", "--scenario", str(path), "--strategy", "thompson", "--runs", "2", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["runs"] == 2

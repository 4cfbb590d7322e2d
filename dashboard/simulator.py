"""Simulator playground logic: :mod:`bandit_core.simulate` runs, traced over time.

``mab simulate`` only reports end-of-run numbers; the playground wants curves (regret and
arm selection as the run unfolds). :func:`trace_run` is therefore the loop of
:func:`bandit_core.simulate.run_once` (same ``choose``, same :func:`observe`, same two RNG
streams, same per-run seeds) with checkpoints added, and the unit tests hold it to the
exact same result. Scenarios are the ``mab simulate`` file format, parsed by
:func:`bandit_core.simulate.parse_scenario`, so a scenario built in the editor can be
downloaded and fed to the CLI unchanged. No Streamlit here: caching lives in the app.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bandit_core.simulate import (
    Environment,
    RunResult,
    Scenario,
    ScenarioError,
    StrategyResult,
    parse_scenario,
    run_once,
    run_seed,
    scenario_from_text,
    summarize,
)
from bandit_core.strategies import (
    InvalidParamsError,
    StrategyParams,
    UnknownStrategyError,
    get_strategy,
    params_for,
    validate_params,
)

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"

#: Budget of one playground request in arm-steps (runs x horizon x strategies x arms).
#: Measured: 10-25 µs per arm-step (busy 2-core machine), so a request stays within seconds.
MAX_ARM_STEPS = 300_000
#: Points per curve: enough to see a shift, few enough for a light chart.
DEFAULT_POINTS = 150


# --------------------------------------------------------------------------- scenarios


def scenario_files(directory: Path = SCENARIO_DIR) -> list[Path]:
    """The bundled scenario files, sorted by name."""
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def scenario_from_bytes(data: bytes, name: str) -> Scenario:
    """An uploaded file as a scenario; every problem is a :class:`ScenarioError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{name}: not UTF-8 text") from None
    return scenario_from_text(text, label=name, name=Path(name).stem)


def parse_arm_names(text: str) -> list[str]:
    """Comma/space separated arm names, or a number ``n`` for ``arm-1 .. arm-n``."""
    text = text.strip()
    if text.isascii() and text.isdigit():  # not "²": isdigit() alone takes it, int() not
        n = int(text)
        if not 1 <= n <= 1000:
            raise ScenarioError("number of arms must be between 1 and 1000")
        return [f"arm-{i + 1}" for i in range(n)]
    names = [p for p in text.replace(",", " ").split() if p]
    if not names:
        raise ScenarioError("give at least one arm name (or a number of arms)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScenarioError(f"arm names must be unique; duplicated: {dup}")
    return names


def default_segments(arms: Sequence[str], horizon: int) -> pd.DataFrame:
    """A starting drift schedule: the original project's 9 AM / 2 PM / 6 PM story for 3 arms,
    otherwise a rotation where each third of the horizon favours a different arm."""
    n = len(arms)
    if n == 3:
        rows = [[0.15, 0.10, 0.08], [0.08, 0.10, 0.18], [0.08, 0.20, 0.10]]
    else:
        rows = []
        for seg in range(3):
            best = (seg * max(1, n // 3)) % n
            rows.append([0.15 if i == best else round(0.05 + 0.05 * (i % 2), 2) for i in range(n)])
    starts = [0, horizon // 3, 2 * horizon // 3]
    frame = pd.DataFrame(rows, columns=list(arms))
    frame.insert(0, "start", starts)
    return frame


def scenario_from_table(
    arms: Sequence[str],
    segments: pd.DataFrame,
    horizon: int,
    period: int | None = None,
    name: str = "playground",
) -> Scenario:
    """The segments editor's table (``start`` + one column of rates per arm) as a scenario.

    Blank rows (the editor's "add row" leftovers) are dropped and rows are sorted by start;
    a missing rate is an error rather than a silent 0.
    """
    if "start" not in segments.columns:
        raise ScenarioError("the segments table needs a 'start' column")
    missing = [a for a in arms if a not in segments.columns]
    if missing:
        raise ScenarioError(f"the segments table has no column for arms {missing}")
    table = segments[["start", *arms]].dropna(how="all")
    rows: list[dict[str, Any]] = []
    for _, row in table.iterrows():
        if pd.isna(row["start"]):
            raise ScenarioError("every segment needs a start step")
        start = int(row["start"])
        means: list[float] = []
        for arm in arms:
            value = row[arm]
            if pd.isna(value):
                raise ScenarioError(f"segment starting at {start}: no rate for arm {arm!r}")
            means.append(float(value))
        rows.append({"start": start, "means": means})
    if not rows:
        raise ScenarioError("add at least one segment (start 0)")
    rows.sort(key=lambda r: int(r["start"]))
    obj: dict[str, Any] = {
        "name": name,
        "description": "built in the dashboard's simulator playground",
        "horizon": horizon,
        "arms": list(arms),
        "segments": rows,
        "period": period,
    }
    return parse_scenario(obj, name=name)


def with_horizon(scenario: Scenario, horizon: int) -> Scenario:
    """The same scenario with every environment's horizon set to ``horizon``."""
    data = scenario.model_dump()
    for env in data["environments"]:
        env["horizon"] = horizon
    return parse_scenario(data, name=scenario.name)


def scenario_json(scenario: Scenario) -> str:
    """The scenario in the file format of ``scenarios/`` (flat when single-environment)."""
    data = scenario.model_dump(mode="json")
    if len(data["environments"]) == 1:
        env = data.pop("environments")[0]
        data = {"name": data["name"], "description": data["description"], **env}
    return json.dumps(data, indent=1)


def parse_params(strategy: str, text: str) -> dict[str, Any]:
    """A params JSON object validated exactly as the API and ``mab simulate`` validate it."""
    text = text.strip()
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{strategy}: params are not JSON ({exc})") from None
    try:
        return validate_params(strategy, obj)
    except (InvalidParamsError, UnknownStrategyError) as exc:
        raise ValueError(f"{strategy}: {exc}") from None


def cli_command(
    scenario_path: str, strategy: str, params: Mapping[str, Any], runs: int, seed: int
) -> str:
    """The ``mab simulate`` call that reproduces one strategy's summary numbers."""
    argv = ["mab", "simulate", "--scenario", scenario_path, "--strategy", strategy]
    if params:
        argv += ["--params", json.dumps(dict(params), separators=(",", ":"))]
    argv += ["--runs", str(runs), "--seed", str(seed)]
    return shlex.join(argv)


# --------------------------------------------------------------------------- budget


def arm_steps(scenario: Scenario, runs: int, n_strategies: int) -> int:
    """Work of a request: what the budget :data:`MAX_ARM_STEPS` is measured in."""
    arms = max(len(e.arms) for e in scenario.environments)
    return runs * scenario.horizon * n_strategies * arms


def capped_runs(
    scenario: Scenario, runs: int, n_strategies: int, budget: int = MAX_ARM_STEPS
) -> int:
    """The most runs (≤ ``runs``, ≥ 1) that fit the budget, so the page stays responsive."""
    per_run = arm_steps(scenario, 1, max(1, n_strategies))
    return max(1, min(runs, budget // max(1, per_run)))


# --------------------------------------------------------------------------- simulation


def checkpoints(horizon: int, points: int = DEFAULT_POINTS) -> list[int]:
    """Step counts (1..horizon, strictly increasing, last = horizon) to sample curves at."""
    n = max(1, min(points, horizon))
    out = sorted({max(1, round(horizon * (k + 1) / n)) for k in range(n)})
    return out


@dataclass(frozen=True, slots=True)
class RunTrace:
    """One run: the summary ``run_once`` would return plus curves at the checkpoints."""

    result: RunResult
    regret: list[float]  # cumulative expected regret after checkpoints[k] steps
    picks: list[list[int]]  # picks per arm in (checkpoints[k-1], checkpoints[k]]


def trace_run(
    env: Environment,
    strategy_name: str,
    params: StrategyParams,
    seed: int,
    marks: Sequence[int],
) -> RunTrace:
    """:func:`bandit_core.simulate.run_once` with checkpoints at ``marks`` (step counts)."""
    regret_curve: list[float] = []
    picks_curve: list[list[int]] = []
    window = [0] * len(env.arms)
    mark_iter = iter(marks)
    next_mark = next(mark_iter, None)

    def on_step(t: int, i: int, regret: float) -> None:
        nonlocal window, next_mark
        window[i] += 1
        if next_mark is not None and t + 1 == next_mark:
            regret_curve.append(regret)
            picks_curve.append(window)
            window = [0] * len(env.arms)
            next_mark = next(mark_iter, None)

    result = run_once(env, strategy_name, params, seed, on_step=on_step)
    return RunTrace(result, regret_curve, picks_curve)


@dataclass(frozen=True)
class PlaygroundResult:
    """Frames for the playground's table and charts (long format, ready for altair)."""

    summary: pd.DataFrame  # one row per strategy: the numbers `mab simulate --json` prints
    regret: pd.DataFrame  # step, strategy, regret_mean, regret_p10, regret_p90
    selection: pd.DataFrame  # step, strategy, arm, share (of picks in the step's window)
    true_means: pd.DataFrame  # step, arm, mean: environment 0's schedule
    arms: list[str]
    runs: int
    horizon: int


def true_means_frame(env: Environment) -> pd.DataFrame:
    """Environment's arm means at every change of segment (and at the end), long format."""
    rows: list[dict[str, Any]] = []
    prev: tuple[float, ...] | None = None
    by_step = env.means_by_step()
    for t, m in enumerate(by_step):
        if m != prev:
            rows.extend({"step": t, "arm": a, "mean": v} for a, v in zip(env.arms, m, strict=True))
            prev = m
    last = by_step[-1]
    rows.extend(
        {"step": env.horizon, "arm": a, "mean": v} for a, v in zip(env.arms, last, strict=True)
    )
    return pd.DataFrame(rows, columns=["step", "arm", "mean"])


def run_playground(
    scenario: Scenario,
    strategies: Sequence[tuple[str, Mapping[str, Any]]],
    runs: int,
    seed: int,
    points: int = DEFAULT_POINTS,
) -> PlaygroundResult:
    """Run every strategy ``runs`` times (run ``j`` on environment ``j % n`` with seed
    ``run_seed(seed, j)``, as ``mab simulate`` does) and aggregate the curves.

    Environments must share the horizon (see :func:`with_horizon`). Arms are matched by
    name across environments, so a multi-environment scenario shows one selection chart.
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    if not strategies:
        raise ValueError("pick at least one strategy")
    horizon = scenario.horizon
    if any(e.horizon != horizon for e in scenario.environments):
        raise ScenarioError("environments have different horizons; set one horizon for all")
    marks = checkpoints(horizon, points)
    sizes = np.diff(np.asarray([0, *marks], dtype=float))
    arm_order: list[str] = []
    for env in scenario.environments:
        arm_order.extend(a for a in env.arms if a not in arm_order)
    arm_pos = {a: k for k, a in enumerate(arm_order)}

    summaries: list[StrategyResult] = []
    regret_rows: list[pd.DataFrame] = []
    selection_rows: list[pd.DataFrame] = []
    for name, raw_params in strategies:
        canonical = get_strategy(name).name
        params = params_for(canonical, raw_params)
        results: list[RunResult] = []
        curves = np.zeros((runs, len(marks)))
        shares = np.zeros((len(marks), len(arm_order)))
        for j in range(runs):
            env = scenario.environments[j % len(scenario.environments)]
            tr = trace_run(env, canonical, params, run_seed(seed, j), marks)
            results.append(tr.result)
            curves[j] = tr.regret
            cols = [arm_pos[a] for a in env.arms]
            shares[:, cols] += np.asarray(tr.picks, dtype=float) / sizes[:, None]
        shares /= runs
        summaries.append(summarize(canonical, params.as_given(), horizon, results))
        regret_rows.append(
            pd.DataFrame(
                {
                    "step": marks,
                    "strategy": canonical,
                    "regret_mean": curves.mean(axis=0),
                    "regret_p10": np.percentile(curves, 10, axis=0),
                    "regret_p90": np.percentile(curves, 90, axis=0),
                }
            )
        )
        sel = pd.DataFrame(shares, columns=arm_order)
        sel.insert(0, "step", marks)
        long = sel.melt(id_vars=["step"], var_name="arm", value_name="share")
        long.insert(1, "strategy", canonical)
        selection_rows.append(long)

    summary = pd.DataFrame([s.to_dict() for s in summaries])
    return PlaygroundResult(
        summary=summary,
        regret=pd.concat(regret_rows, ignore_index=True),
        selection=pd.concat(selection_rows, ignore_index=True),
        true_means=true_means_frame(scenario.environments[0]),
        arms=arm_order,
        runs=runs,
        horizon=horizon,
    )

"""A pure bandit simulator over scenario files, sharing the service's code paths.

Each step ``t`` the strategy picks with exactly the service's
``choose(arm_ids, stats, params, rng, now)`` and the reward is folded with
:func:`bandit_core.adaptive.observe` (+ :func:`~bandit_core.adaptive.restart_others` on an
alarm), the one implementation of the per-reward update that
:func:`bandit_core.fold.fold_batch` uses too (no pydantic event per step: too slow).
Time: ``now = t * seconds_per_step``. The service's clock is unix seconds; a scenario
whose story is told in wall-clock time (the daily one: one step = one minute) says so
with ``seconds_per_step`` (default 1: one step = one time unit), so hour-of-day
statistics and half-lives mean the same thing as in the service.

Rewards are Bernoulli with the current segment's means; with a ``period`` the segment is
looked up at ``t % period`` (daily patterns). Regret is the cumulative *expected* regret
against the best arm of each moment: ``sum_t max(means_t) - means_t[chosen]``.
Runs use common random numbers: run ``j`` draws the same uniforms for every strategy, so
strategy differences are not drowned by reward noise.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bandit_core.adaptive import observe, restart_others
from bandit_core.state import ArmStats
from bandit_core.strategies import STRATEGIES, StrategyParams, get_strategy, params_for


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message says where and why."""


class Segment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(ge=0, description="First step (or step within the period) it holds.")
    means: tuple[float, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _probabilities(self) -> Segment:
        for m in self.means:
            if not (0.0 <= m <= 1.0) or math.isnan(m):
                raise ValueError(f"means must be Bernoulli rates in [0, 1], got {m}")
        return self


class Environment(BaseModel):
    """One piecewise-stationary Bernoulli bandit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: int = Field(gt=0, le=10_000_000)
    arms: tuple[str, ...] = Field(min_length=1, max_length=1000)
    segments: tuple[Segment, ...] = Field(min_length=1)
    period: int | None = Field(default=None, gt=0)
    seconds_per_step: float = Field(default=1.0, gt=0.0, le=86400.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Environment:
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arms must be unique")
        if self.segments[0].start != 0:
            raise ValueError("the first segment must start at 0")
        starts = [s.start for s in self.segments]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError(f"segment starts must increase strictly, got {starts}")
        for i, seg in enumerate(self.segments):
            if len(seg.means) != len(self.arms):
                raise ValueError(
                    f"segments[{i}] has {len(seg.means)} means for {len(self.arms)} arms"
                )
        if self.period is not None and starts[-1] >= self.period:
            raise ValueError(f"segment start {starts[-1]} is not inside period {self.period}")
        return self

    def means_by_step(self) -> list[tuple[float, ...]]:
        """The arm means at every step ``0 .. horizon-1``."""
        starts = [s.start for s in self.segments]
        out: list[tuple[float, ...]] = []
        j = 0
        for t in range(self.horizon):
            u = t % self.period if self.period is not None else t
            if self.period is not None:
                j = 0
                while j + 1 < len(starts) and starts[j + 1] <= u:
                    j += 1
            else:
                while j + 1 < len(starts) and starts[j + 1] <= u:
                    j += 1
            out.append(self.segments[j].means)
        return out


class Scenario(BaseModel):
    """A scenario file: one environment, or a list of them that runs cycle through."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    description: str = ""
    environments: tuple[Environment, ...] = Field(min_length=1)

    @property
    def horizon(self) -> int:
        return max(e.horizon for e in self.environments)


def parse_scenario(obj: Any, name: str = "") -> Scenario:
    """Validate a decoded scenario JSON (single-environment or ``environments`` form)."""
    if not isinstance(obj, dict):
        raise ScenarioError(f"scenario must be a JSON object, got {type(obj).__name__}")
    data = dict(obj)
    if "environments" not in data:
        meta = {k: data.pop(k) for k in ("name", "description") if k in data}
        data = {**meta, "environments": [data]}
    data.setdefault("name", name)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ScenarioError("invalid scenario: " + "; ".join(lines)) from None


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file; errors are :class:`ScenarioError` with the path."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read ({exc.strerror})") from None
    return scenario_from_text(raw, label=str(p), name=p.stem)


def scenario_from_text(text: str, label: str, name: str) -> Scenario:
    """A scenario from the JSON text of a file or an upload; every problem is a
    :class:`ScenarioError` that starts with ``label`` (the path or the upload's name), so
    the CLI and the dashboard report a bad file the same way."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{label}: not JSON ({exc})") from None
    try:
        return parse_scenario(obj, name=name)
    except ScenarioError as exc:
        raise ScenarioError(f"{label}: {exc}") from None


@dataclass(frozen=True, slots=True)
class RunResult:
    regret: float
    reward: float
    best_arm_share_last_10pct: float


def run_once(
    env: Environment,
    strategy_name: str,
    params: StrategyParams,
    seed: int,
    means: Sequence[tuple[float, ...]] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> RunResult:
    """One run of ``strategy_name`` with its ``params`` (from :func:`params_for`) on
    ``env``; deterministic given ``seed``.

    ``on_step(t, arm_index, cumulative_regret)`` lets the dashboard draw curves from
    this very loop instead of a copy of it.
    """
    strategy = get_strategy(strategy_name)
    if not isinstance(params, strategy.params_model):
        # Another strategy's model may share every field this one reads: fail, not drift.
        raise TypeError(
            f"{strategy.name} takes {strategy.params_model.__name__}, got {type(params).__name__}"
        )
    arm_ids = env.arms
    stats = [ArmStats() for _ in arm_ids]
    means = env.means_by_step() if means is None else means
    rng = random.Random(seed)
    reward_rng = random.Random(seed ^ 0x5DEECE66D)
    choose = strategy.choose
    regret = 0.0
    reward_total = 0.0
    tail_start = env.horizon - max(1, env.horizon // 10)
    tail_best = 0
    dt = env.seconds_per_step
    for t in range(env.horizon):
        m = means[t]
        now = t * dt
        i = choose(arm_ids, stats, params, rng, now)
        best = max(m)
        regret += best - m[i]
        r = 1.0 if reward_rng.random() < m[i] else 0.0
        reward_total += r
        if t >= tail_start and m[i] >= best:
            tail_best += 1
        s = stats[i]
        s.decisions += 1
        if observe(s, r, now) is not None:
            restart_others(stats, s)
        if on_step is not None:
            on_step(t, i, regret)
    return RunResult(regret, reward_total, tail_best / (env.horizon - tail_start))


@dataclass(frozen=True, slots=True)
class StrategyResult:
    """What ``mab simulate --json`` prints per strategy."""

    strategy: str
    params: dict[str, Any]
    runs: int
    horizon: int
    regret_mean: float
    regret_std: float
    reward_mean: float
    best_arm_share_last_10pct: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_seed(seed: int, run: int) -> int:
    """The seed of run ``run``: distinct per run, the same for every strategy."""
    return (seed * 1_000_003 + run) % 2**63


def _run_job(job: tuple[Scenario, str, StrategyParams, int, int]) -> RunResult:
    scenario, name, params, seed, run = job
    env = scenario.environments[run % len(scenario.environments)]
    return run_once(env, name, params, run_seed(seed, run))


def summarize(
    name: str, params: dict[str, Any], horizon: int, results: Sequence[RunResult]
) -> StrategyResult:
    n = len(results)
    regrets = [r.regret for r in results]
    mean = sum(regrets) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in regrets) / (n - 1)) if n > 1 else 0.0
    return StrategyResult(
        strategy=name,
        params=params,
        runs=n,
        horizon=horizon,
        regret_mean=mean,
        regret_std=std,
        reward_mean=sum(r.reward for r in results) / n,
        best_arm_share_last_10pct=sum(r.best_arm_share_last_10pct for r in results) / n,
    )


def simulate(
    scenario: Scenario,
    strategy: str,
    params: Mapping[str, Any] | None = None,
    runs: int = 40,
    seed: int = 42,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> StrategyResult:
    """``runs`` independent runs (run ``j`` on environment ``j % len(environments)``).

    ``params`` are validated like the API does, once; ``workers > 1`` spreads runs over
    processes (results are identical: each run is seeded on its own).
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    name = get_strategy(strategy).name
    typed = params_for(name, params)
    jobs = [(scenario, name, typed, seed, j) for j in range(runs)]
    results: list[RunResult] = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(_run_job, jobs):
                results.append(res)
                if progress is not None:
                    progress(1)
    else:
        for job in jobs:
            results.append(_run_job(job))
            if progress is not None:
                progress(1)
    return summarize(name, typed.as_given(), scenario.horizon, results)


def strategy_names() -> list[str]:
    """Every registered strategy, in registry order (what ``--strategy all`` runs)."""
    return list(STRATEGIES)

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
A ``"reward": "revenue"`` environment gives each arm a conversion rate and a lognormal
order value instead; its "means" are the expected revenue per visitor, so the regret is
in revenue. Strategies for continuous rewards learn from the order value (0 without a
conversion), binary ones from the conversion indicator (:func:`learns_value`).
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
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from bandit_core.adaptive import observe, restart_others
from bandit_core.state import ArmStats
from bandit_core.strategies import STRATEGIES, StrategyParams, get_strategy, params_for


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message says where and why."""


class OrderValue(BaseModel):
    """A converting visitor's order value: lognormal with this ``mean`` and ``sd``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float = Field(gt=0.0, allow_inf_nan=False)
    sd: float = Field(ge=0.0, allow_inf_nan=False)

    def log_params(self) -> tuple[float, float]:
        """``(mu, sigma)`` of the normal whose exponential has this mean and sd."""
        sigma2 = math.log1p((self.sd / self.mean) ** 2)
        return math.log(self.mean) - sigma2 / 2.0, math.sqrt(sigma2)


class Segment(BaseModel):
    """The arms' rewards from ``start`` on: Bernoulli ``means`` (``"reward":
    "bernoulli"``), or per-arm ``conversion`` rates and ``order_value`` distributions
    (``"reward": "revenue"``). Fields a segment does not use are left out of its dump,
    so a Bernoulli scenario writes back as it always did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(ge=0, description="First step (or step within the period) it holds.")
    means: tuple[float, ...] | None = Field(default=None, min_length=1)
    conversion: tuple[float, ...] | None = Field(default=None, min_length=1)
    order_value: tuple[OrderValue, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _probabilities(self) -> Segment:
        for what, rates in (
            ("means must be Bernoulli rates", self.means),
            ("conversion must be rates", self.conversion),
        ):
            for m in rates or ():
                if not (0.0 <= m <= 1.0) or math.isnan(m):
                    raise ValueError(f"{what} in [0, 1], got {m}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}

    @property
    def values(self) -> tuple[float, ...]:
        """Each arm's expected reward per visitor (revenue: conversion x mean value)."""
        if self.means is not None:
            return self.means
        assert self.conversion is not None
        assert self.order_value is not None
        return tuple(p * v.mean for p, v in zip(self.conversion, self.order_value, strict=True))


class Environment(BaseModel):
    """One piecewise-stationary bandit: Bernoulli rewards, or with ``reward: "revenue"``
    a conversion (Bernoulli) times a lognormal order value, whose regret is in revenue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: int = Field(gt=0, le=10_000_000)
    arms: tuple[str, ...] = Field(min_length=1, max_length=1000)
    segments: tuple[Segment, ...] = Field(min_length=1)
    period: int | None = Field(default=None, gt=0)
    seconds_per_step: float = Field(default=1.0, gt=0.0, le=86400.0, allow_inf_nan=False)
    reward: Literal["bernoulli", "revenue"] = "bernoulli"

    @model_validator(mode="after")
    def _consistent(self) -> Environment:
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arms must be unique")
        if self.segments[0].start != 0:
            raise ValueError("the first segment must start at 0")
        starts = [s.start for s in self.segments]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError(f"segment starts must increase strictly, got {starts}")
        k = len(self.arms)
        for i, seg in enumerate(self.segments):
            if self.reward == "bernoulli":
                if seg.conversion is not None or seg.order_value is not None:
                    raise ValueError(
                        f'segments[{i}]: conversion and order_value need "reward": "revenue"'
                    )
                if seg.means is None:
                    raise ValueError(f"segments[{i}] has no means")
                if len(seg.means) != k:
                    raise ValueError(f"segments[{i}] has {len(seg.means)} means for {k} arms")
                continue
            if seg.means is not None:
                raise ValueError(
                    f"segments[{i}]: a revenue segment has conversion and order_value, not means"
                )
            for field, per_arm in (
                ("conversion", seg.conversion),
                ("order_value", seg.order_value),
            ):
                if per_arm is None:
                    raise ValueError(f"segments[{i}] has no {field} (one per arm)")
                if len(per_arm) != k:
                    raise ValueError(f"segments[{i}] has {len(per_arm)} {field} for {k} arms")
        if self.period is not None and starts[-1] >= self.period:
            raise ValueError(f"segment start {starts[-1]} is not inside period {self.period}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("reward") == "bernoulli":
            del data["reward"]
        return data

    def segment_by_step(self) -> list[int]:
        """The index of the segment in force at every step ``0 .. horizon-1``."""
        starts = [s.start for s in self.segments]
        out: list[int] = []
        j = 0
        for t in range(self.horizon):
            u = t % self.period if self.period is not None else t
            if self.period is not None:
                j = 0
            while j + 1 < len(starts) and starts[j + 1] <= u:
                j += 1
            out.append(j)
        return out

    def means_by_step(self) -> list[tuple[float, ...]]:
        """The arms' expected rewards at every step ``0 .. horizon-1`` (revenue: per
        visitor)."""
        values = [s.values for s in self.segments]
        return [values[j] for j in self.segment_by_step()]


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
    revenue = _RevenueDraws(env, learns_value(strategy.name)) if env.reward == "revenue" else None
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
        if revenue is None:
            r = 1.0 if reward_rng.random() < m[i] else 0.0
            reward_total += r
        else:
            r, earned = revenue.draw(t, i, reward_rng)
            reward_total += earned
        if t >= tail_start and m[i] >= best:
            tail_best += 1
        s = stats[i]
        s.decisions += 1
        if observe(s, r, now) is not None:
            restart_others(stats, s)
        if on_step is not None:
            on_step(t, i, regret)
    return RunResult(regret, reward_total, tail_best / (env.horizon - tail_start))


def learns_value(strategy_name: str) -> bool:
    """Whether a strategy learns from the order value on a revenue scenario (it declares
    continuous rewards); the others learn from the conversion indicator, as a team
    optimising its conversion rate would."""
    return "continuous" in get_strategy(strategy_name).reward_types


class _RevenueDraws:
    """The rewards of a revenue environment: a visitor of arm ``i`` converts with the
    segment's rate; a converting one orders a lognormal value.

    Every step draws one uniform and one normal whatever happens, so run ``j`` sees the
    same visitors for every strategy (common random numbers)."""

    def __init__(self, env: Environment, value: bool) -> None:
        self.value = value
        self.by_step = env.segment_by_step()
        self.conversion: list[tuple[float, ...]] = []
        self.lognormal: list[list[tuple[float, float]]] = []
        for seg in env.segments:
            assert seg.conversion is not None
            assert seg.order_value is not None
            self.conversion.append(seg.conversion)
            self.lognormal.append([v.log_params() for v in seg.order_value])

    def draw(self, t: int, i: int, rng: random.Random) -> tuple[float, float]:
        """``(learned reward, revenue earned)`` of arm ``i``'s visitor at step ``t``."""
        j = self.by_step[t]
        u = rng.random()
        z = rng.gauss(0.0, 1.0)
        if u >= self.conversion[j][i]:
            return 0.0, 0.0
        mu, sigma = self.lognormal[j][i]
        earned = math.exp(mu + sigma * z)
        return (earned if self.value else 1.0), earned


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


def strategy_names(scenario: Scenario | None = None) -> list[str]:
    """What ``--strategy all`` runs, in registry order: every registered strategy on a
    revenue scenario (or without one), only those for binary rewards on a Bernoulli one
    (a continuous sampler would only repeat a binary one there, on 0/1 rewards)."""
    if scenario is None or any(e.reward == "revenue" for e in scenario.environments):
        return list(STRATEGIES)
    return [n for n, s in STRATEGIES.items() if "binary" in s.reward_types]

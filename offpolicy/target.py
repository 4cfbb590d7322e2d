"""The target policy's action probabilities at every logged decision.

Definition (what the estimators then value): for logged decision ``i`` at time ``t_i``,
``pi_i`` is the registered strategy's ``propensities(arm_ids, stats, params, rng, now=t_i)``
where ``stats`` is the state folded (:mod:`offpolicy.timeline`, i.e. the service's
:func:`bandit_core.fold.fold_batch`) from every event of the log *before* ``t_i``, and
``arm_ids`` are the arms of the configuration version the decision was made under. So
the target decides from exactly the information the logging policy had, with the same
strategy code the decider runs; a learning target is valued as "this decision rule
applied to the logged history", not as a counterfactual run that would have collected
different data (see docs/off-policy-evaluation.md).

Closed-form strategies (ε-greedy, UCB1, SW-UCB) give exact probabilities. Thompson
sampling and its variants estimate them by Monte Carlo (``samples`` draws per decision,
with a pseudo-count of one draw so no arm gets exactly 0): an unbiased-up-to-``1/samples``
estimate, and the estimators are linear in ``pi``, so the Monte Carlo noise only adds a
little variance. One seeded generator serves the whole evaluation, so a given log,
strategy, params and seed always give the same numbers.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from bandit_core.state import ExperimentState
from bandit_core.strategies import get_strategy, params_for
from offpolicy.estimators import FloatArray
from offpolicy.log import ExperimentLog
from offpolicy.timeline import fold_timeline
from schemas.events import DecisionMade, ExperimentConfig

#: Monte Carlo draws per decision for Thompson-family targets (the decider logs with 1000).
DEFAULT_SAMPLES: Final = 1000


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """A registered strategy with its params as a config stores them (typed once per
    replay by :func:`~bandit_core.strategies.params_for`), and the evaluation's own seed."""

    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    samples: int = DEFAULT_SAMPLES


@dataclass(frozen=True, slots=True)
class TargetReplay:
    """``probs[m]`` is ``pi`` at decision ``evaluated[m]`` over ``arm_ids``.

    ``skipped`` maps decisions that could not be evaluated to the reason; ``outcomes``
    are the fold outcomes of the rewards (as :func:`offpolicy.timeline.fold_timeline`).
    """

    arm_ids: tuple[str, ...]
    evaluated: list[int]
    probs: FloatArray
    skipped: dict[int, str]
    outcomes: list[str]


def arm_order(log: ExperimentLog) -> tuple[str, ...]:
    """All arms of the experiment: the highest config's order (arms are append-only),
    then any arm only decisions name, in order of appearance."""
    arms: list[str] = []
    best: ExperimentConfig | None = None
    for event in log.config_events:
        if best is None or event.config.version > best.version:
            best = event.config
    if best is not None:
        arms.extend(best.arm_ids)
    known = set(arms)
    for d in log.decisions:
        if d.arm_id not in known:
            known.add(d.arm_id)
            arms.append(d.arm_id)
    return tuple(arms)


class _ConfigAt:
    """The configuration a decision was made under: its ``config_version`` exactly, else
    the highest version below it, else the folded state's current config."""

    def __init__(self, log: ExperimentLog) -> None:
        self.by_version: dict[int, ExperimentConfig] = {}
        for event in log.config_events:
            self.by_version.setdefault(event.config.version, event.config)
        self.versions = sorted(self.by_version)

    def __call__(self, decision: DecisionMade, state: ExperimentState) -> ExperimentConfig | None:
        config = self.by_version.get(decision.config_version)
        if config is not None:
            return config
        below = [v for v in self.versions if v <= decision.config_version]
        if below:
            return self.by_version[below[-1]]
        return state.config


def replay_target(
    log: ExperimentLog, policy: TargetPolicy, decisions: Sequence[int]
) -> TargetReplay:
    """The target's probabilities at ``decisions`` (indices into ``log.decisions``)."""
    strategy = get_strategy(policy.strategy)
    params = params_for(policy.strategy, policy.params)
    arm_ids = arm_order(log)
    column = {a: j for j, a in enumerate(arm_ids)}
    wanted = set(decisions)
    rng = random.Random(policy.seed)
    config_at = _ConfigAt(log)
    rows: dict[int, list[float]] = {}
    skipped: dict[int, str] = {}

    def hook(i: int, decision: DecisionMade, state: ExperimentState) -> None:
        config = config_at(decision, state)
        if config is None:
            skipped[i] = "no_config"
            return
        if decision.arm_id not in config.arm_ids:
            skipped[i] = "arm_not_in_config"
            return
        probs = strategy.propensities(
            config.arm_ids,
            state.stats_for(config.arm_ids),
            params,
            rng,
            decision.ts,
            policy.samples,
        )
        row = [0.0] * len(arm_ids)
        for arm, prob in zip(config.arm_ids, probs, strict=True):
            row[column[arm]] = prob
        rows[i] = row

    result = fold_timeline(log, hook, wanted)
    evaluated = [i for i in decisions if i in rows]
    probs = (
        np.array([rows[i] for i in evaluated], dtype=np.float64)
        if evaluated
        else np.zeros((0, len(arm_ids)))
    )
    return TargetReplay(arm_ids, evaluated, probs, skipped, result.outcomes)

"""Off-policy evaluation of one experiment's log: join, target replay, estimators, report.

Reward attribution: a decision's reward is the first reward naming its ``decision_id``
that the fold *applied* (duplicates and rejected rewards never count, as in the live
statistics). Rewards without a decision id cannot be attributed and are not samples
(they still shape the state the target decides from, as they do live). A decision
without an applied reward is, by ``missing_reward``:

* ``"drop"`` (default): left out. Right when storefronts report every outcome (0 and 1,
  as the demo traffic does) and a missing reward only means "not reported (yet)",
  independently of the arm: the service's own statistics make the same assumption.
* ``"zero"``: counted as reward 0. Right when storefronts only report conversions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import numpy as np

from bandit_core.fold import APPLIED
from bandit_core.strategies import get_strategy, validate_params
from offpolicy.estimators import DEFAULT_CONFIDENCE, DEFAULT_FOLDS, Estimates, estimate
from offpolicy.log import ExperimentLog, join
from offpolicy.target import DEFAULT_SAMPLES, TargetPolicy, replay_target

MissingReward = Literal["drop", "zero"]
MISSING_REWARD_CHOICES: Final = ("drop", "zero")
#: Warn when more than this share of the evaluated decisions has no applied reward.
MAX_MISSING_SHARE: Final = 0.05


@dataclass(frozen=True, slots=True)
class EvaluationOptions:
    """How to evaluate; ``max_decisions`` keeps only the most recent decisions (by time)."""

    max_decisions: int | None = None
    missing_reward: MissingReward = "drop"
    confidence: float = DEFAULT_CONFIDENCE
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    samples: int = DEFAULT_SAMPLES

    def __post_init__(self) -> None:
        if self.max_decisions is not None and self.max_decisions < 1:
            raise ValueError("max_decisions must be >= 1")
        if self.missing_reward not in MISSING_REWARD_CHOICES:
            raise ValueError(f"missing_reward must be one of {MISSING_REWARD_CHOICES}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError("confidence must be in (0, 1)")
        if self.samples < 1:
            raise ValueError("samples must be >= 1")


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """What ``mab evaluate --json`` prints and the decider's evaluate endpoint returns."""

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    missing_reward: str
    decisions_logged: int
    decisions_considered: int
    decisions_evaluated: int
    decisions_without_reward: int
    decisions_skipped: dict[str, int]
    rewards_logged: int
    rewards_unlinked: int
    rewards_orphan: int
    records_rejected: int
    truncated: bool
    result: Estimates
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["result"] = self.result.to_dict()
        return out


def evaluate_log(
    log: ExperimentLog,
    strategy: str,
    params: Mapping[str, Any] | None = None,
    options: EvaluationOptions | None = None,
) -> EvaluationReport:
    """Estimate what ``strategy`` with ``params`` would have earned on ``log``'s decisions.

    Raises :class:`~bandit_core.strategies.UnknownStrategyError` or
    :class:`~bandit_core.strategies.InvalidParamsError` for a bad target.
    """
    opts = options or EvaluationOptions()
    name = get_strategy(strategy).name
    clean = validate_params(name, params)
    by_time = sorted(range(len(log.decisions)), key=lambda i: log.decisions[i].ts)
    considered = by_time
    truncated = False
    if opts.max_decisions is not None and len(by_time) > opts.max_decisions:
        considered = by_time[-opts.max_decisions :]
        truncated = True
    policy = TargetPolicy(name, clean, seed=opts.seed, samples=opts.samples)
    replay = replay_target(log, policy, considered)
    joined = join(log, replay.outcomes)

    column = {a: j for j, a in enumerate(replay.arm_ids)}
    rewards: list[float] = []
    arms: list[int] = []
    props: list[float] = []
    keep: list[int] = []
    missing = 0
    for m, i in enumerate(replay.evaluated):
        d = log.decisions[i]
        reward = next(
            (log.rewards[j].reward for j in joined.rewards_of[i] if replay.outcomes[j] == APPLIED),
            None,
        )
        if reward is None:
            missing += 1
            if opts.missing_reward == "drop":
                continue
            reward = 0.0
        rewards.append(reward)
        arms.append(column[d.arm_id])
        props.append(d.propensity)
        keep.append(m)
    result = estimate(
        np.array(rewards, dtype=np.float64),
        np.array(arms, dtype=np.int64),
        np.array(props, dtype=np.float64),
        replay.probs[keep] if keep else np.zeros((0, len(replay.arm_ids))),
        replay.arm_ids,
        confidence=opts.confidence,
        folds=opts.folds,
    )
    skipped: dict[str, int] = {}
    for reason in replay.skipped.values():
        skipped[reason] = skipped.get(reason, 0) + 1
    warnings = list(result.warnings)
    n_eval = len(replay.evaluated)
    if n_eval and missing / n_eval > MAX_MISSING_SHARE:
        treated = "left out" if opts.missing_reward == "drop" else "counted as 0"
        warnings.append(
            f"{missing} of {n_eval} decisions ({missing / n_eval:.1%}) have no applied "
            f"reward and were {treated} (missing_reward={opts.missing_reward}): the "
            "estimates assume that is unrelated to the arm"
        )
    if skipped:
        warnings.append(
            "decisions not evaluated: "
            + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        )
    if truncated:
        warnings.append(
            f"only the {opts.max_decisions} most recent of {len(log.decisions)} decisions "
            "were evaluated"
        )
    if log.rejected:
        warnings.append(f"{len(log.rejected)} undecodable records were skipped")
    return EvaluationReport(
        experiment_id=log.experiment_id,
        strategy=name,
        strategy_params=clean,
        missing_reward=opts.missing_reward,
        decisions_logged=len(log.decisions),
        decisions_considered=len(considered),
        decisions_evaluated=result.n,
        decisions_without_reward=missing,
        decisions_skipped=skipped,
        rewards_logged=len(log.rewards),
        rewards_unlinked=joined.unlinked,
        rewards_orphan=joined.orphans,
        records_rejected=len(log.rejected),
        truncated=truncated,
        result=result,
        warnings=warnings,
    )

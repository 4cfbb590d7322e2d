"""The bandit's uplift over the holdout, per visitor, with an anytime-valid interval.

Every rewarded decision is one visitor's outcome on the objective (the reward, capped
like the strategy learns it; a decision whose attribution window closed counts with the
default reward). Its decision id says whether the holdout served it
(:func:`bandit_core.decision_ids.is_holdout_id`), so the fold splits the outcomes in two
without needing the decision itself, which may be folded after its reward. Each side
keeps a :class:`~bandit_core.stopping.ConfidenceSequence` for its mean at level
``1 - alpha/2``; the difference of the two intervals is then a ``1 - alpha`` interval
for ``bandit mean - holdout mean`` that stays valid however often ``/stats`` is read
(a union bound over two anytime-valid sequences). The holdout's visitors are an i.i.d.
sample of the control arm; the bandit's sequence covers the running average of its
per-visitor means, which is the value the bandit delivered so far.

The range of an outcome is what the sequences need: ``[0, 1]`` for a binary experiment,
``[0, reward_cap]`` for a continuous one with a cap, else ``[0, REWARD_CEILING]`` (valid,
but wide: a cap is what makes the interval useful for amounts).

Visitors without a reward are not counted: rewards with a decision id are the sample,
so an experiment that does not send its zeros should set an attribution window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from bandit_core.stopping import ConfidenceSequence
from schemas.events import REWARD_CEILING, ExperimentConfig

#: The uplift interval's error rate (each side's sequence gets half of it).
UPLIFT_ALPHA: Final = 0.05


def outcome_bound(config: ExperimentConfig) -> float:
    """The largest outcome the fold can observe for ``config``'s experiment."""
    if config.reward_type == "binary":
        return 1.0
    return config.reward_cap if config.reward_cap is not None else REWARD_CEILING


def _sequence(high: float) -> ConfidenceSequence:
    return ConfidenceSequence(alpha=UPLIFT_ALPHA / 2, high=high, low=0.0)


def _mean(cs: ConfidenceSequence) -> float | None:
    if cs.n == 0:
        return None
    return cs.low + cs.sum_x / cs.n * (cs.high - cs.low)


def _to_list(cs: ConfidenceSequence) -> list[float]:
    return [
        cs.alpha,
        cs.high,
        cs.low,
        cs.n,
        cs.sum_x,
        cs.sum_sq_dev,
        cs.sum_lambda,
        cs.sum_lambda_x,
        cs.sum_penalty,
    ]


def _from_list(values: list[Any]) -> ConfidenceSequence:
    if len(values) != 9:
        raise ValueError(f"a confidence sequence needs 9 values, got {len(values)}")
    alpha, high, low, n, *sums = values
    cs = ConfidenceSequence(float(alpha), float(high), float(low), int(n))
    cs.sum_x, cs.sum_sq_dev, cs.sum_lambda, cs.sum_lambda_x, cs.sum_penalty = (
        float(x) for x in sums
    )
    return cs


@dataclass(slots=True)
class Uplift:
    """The two running sequences: outcomes of holdout and of bandit decisions."""

    holdout: ConfidenceSequence
    bandit: ConfidenceSequence

    @classmethod
    def for_config(cls, config: ExperimentConfig) -> Uplift:
        high = outcome_bound(config)
        return cls(_sequence(high), _sequence(high))

    def observe(self, held_out: bool, outcome: float) -> None:
        (self.holdout if held_out else self.bandit).update(outcome)

    @property
    def holdout_mean(self) -> float | None:
        return _mean(self.holdout)

    @property
    def bandit_mean(self) -> float | None:
        return _mean(self.bandit)

    @property
    def estimate(self) -> float | None:
        """Bandit mean minus holdout mean per visitor (``None`` until both have one)."""
        b, h = self.bandit_mean, self.holdout_mean
        return None if b is None or h is None else b - h

    def interval(self) -> tuple[float, float]:
        """The ``1 - UPLIFT_ALPHA`` anytime-valid interval for the uplift."""
        b_lo, b_hi = self.bandit.interval()
        h_lo, h_hi = self.holdout.interval()
        return b_lo - h_hi, b_hi - h_lo

    def clone(self) -> Uplift:
        return Uplift(_from_list(_to_list(self.holdout)), _from_list(_to_list(self.bandit)))

    def to_list(self) -> list[list[float]]:
        return [_to_list(self.holdout), _to_list(self.bandit)]

    @classmethod
    def from_list(cls, values: list[Any]) -> Uplift:
        if len(values) != 2:
            raise ValueError(f"uplift needs 2 sequences, got {len(values)}")
        return cls(_from_list(values[0]), _from_list(values[1]))

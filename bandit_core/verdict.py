"""The stopping verdict of one experiment: P(best), expected loss, and the winner.

Whose posterior: the *reference sampler of the experiment's reward type*
(:data:`REFERENCE_STRATEGY`: Beta-Bernoulli Thompson for binary rewards, revenue
Thompson, conversion x order value, for continuous ones), through
:meth:`~bandit_core.strategies.base.Strategy.posterior_draws`, not the posterior of the
strategy serving traffic. The strategy can be hot-swapped (``POST /config``) while the
reward type, the thresholds and the cap are fixed at creation; the live consumer folds
under the config it reads now, replay under the final one, so a verdict that followed the
serving strategy would be declared at another point (or for another arm) by a replay of
a log whose strategy changed. The reference posterior is also the plain, stationary one
a team reads a result from; a drift-adaptive sampler forgets on purpose.

Which arms: those with at least one folded reward, in the experiment's arm order (no
verdict before two have one). Rewards are folded in log order live and in replay, while
arms may be added to the config later (replay folds under the final config) and decisions
interleave with rewards differently: the rewarded arms are the one set both agree on at
every reward. An arm without a reward is not judged, so send the zeros (or set an
attribution window).

When: the fold checks at the counts of folded rewards :func:`is_check` names (every 100
up to 10,000, then every 1,000 up to 100,000, and so on: a check costs about a
millisecond, and a long-running experiment's verdict moves slowly), with a generator
seeded from the experiment and that count, and the reward's own time as "now". Live
batches and replay chunks then check at the same points with the same draws, so a replay
declares the same winner at the same reward, and :class:`~schemas.events.WinnerDeclared`
is derived like a change point. A check costs :func:`samples_for` draws per arm, fewer
with many arms, so a catalogue-sized experiment stays cheap to fold.

Default threshold (``stop_expected_loss`` null): 0.001 for binary rewards, a tenth of a
percentage point of conversion per visitor (below what an e-commerce test can detect in
a reasonable time, so stopping costs less than continuing to look); for continuous ones
1% of the leader's posterior value per visitor, because the unit (cents, euros, yen) is
the experiment's own and no absolute number fits them all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

import numpy as np

from bandit_core.state import ExperimentState
from bandit_core.stopping import StoppingSummary, declared_winner, stopping_summary
from bandit_core.strategies import get_strategy, params_for
from schemas.events import ExperimentConfig, RewardType

#: The posterior each reward type's verdict is read from (module docstring).
REFERENCE_STRATEGY: Final[dict[RewardType, str]] = {
    "binary": "thompson",
    "continuous": "revenue_thompson",
}
#: Joint posterior draws per verdict (fewer with many arms: :func:`samples_for`). The
#: fold checks every 100 rewards early on, so a check is on the reward consumer's path:
#: 1,000 draws keep it near 0.4 ms with a few arms (under a microsecond per folded
#: reward over the first 200,000), with a Monte Carlo error of P(best) under 1 point at
#: 0.95.
VERDICT_SAMPLES: Final = 1000
#: Draws (samples x arms) a verdict may cost at most, down to :data:`MIN_SAMPLES` rows.
VERDICT_DRAWS: Final = 100_000
MIN_SAMPLES: Final = 250
#: Default expected-loss thresholds (module docstring).
BINARY_LOSS: Final = 0.001
RELATIVE_LOSS: Final = 0.01
#: Folded rewards between two checks of the fold, at least (:func:`is_check`).
CHECK_INTERVAL: Final = 100


@dataclass(frozen=True, slots=True)
class Verdict:
    """The posterior's verdict with the threshold in force and the winner, if any."""

    arm_ids: tuple[str, ...]
    summary: StoppingSummary
    threshold: float
    winner: int | None
    strategy: str


def is_check(rewards: int) -> bool:
    """Whether the fold checks after ``rewards`` folded rewards: at multiples of
    :data:`CHECK_INTERVAL` below 10,000, then of a tenth of the count's power of ten."""
    if rewards % CHECK_INTERVAL:
        return False
    step: int = max(CHECK_INTERVAL, 10 ** (len(str(rewards)) - 2))
    return rewards % step == 0


def samples_for(arms: int) -> int:
    """Posterior draws of a verdict over ``arms`` arms."""
    return max(MIN_SAMPLES, min(VERDICT_SAMPLES, VERDICT_DRAWS // max(arms, 1)))


def loss_threshold(config: ExperimentConfig, leader_value: float) -> float:
    """The expected loss below which the leader may be declared (module docstring)."""
    if config.stop_expected_loss is not None:
        return config.stop_expected_loss
    if config.reward_type == "binary":
        return BINARY_LOSS
    return RELATIVE_LOSS * max(leader_value, 0.0)


def verdict(state: ExperimentState, now: float, seed: str) -> Verdict | None:
    """The verdict on ``state``'s rewarded arms (``None`` without a config or before two
    arms have a reward). ``seed`` makes the draws reproducible (the fold's check and
    ``/stats`` each name theirs)."""
    config = state.config
    if config is None:
        return None
    arms = state.arms
    arm_ids = tuple(a for a in config.arm_ids if a in arms and arms[a].pulls > 0)
    if len(arm_ids) < 2:
        return None
    name = REFERENCE_STRATEGY[config.reward_type]
    strategy = get_strategy(name)
    params = params_for(name, {})
    stats = state.stats_for(arm_ids)
    samples = samples_for(len(arm_ids))
    draws = strategy.posterior_draws(stats, params, random.Random(seed), now, samples)
    if draws is None:  # pragma: no cover - both reference samplers have a posterior
        return None
    summary = stopping_summary(draws)
    leader_value = float(np.mean(draws[:, summary.leader]))
    threshold = loss_threshold(config, leader_value)
    winner = declared_winner(summary, config.stop_probability, threshold)
    return Verdict(arm_ids, summary, threshold, winner, name)


def check_seed(experiment_id: str, rewards: int) -> str:
    """The seed of the fold's check after ``rewards`` folded rewards."""
    return f"stop\0{experiment_id}\0{rewards}"

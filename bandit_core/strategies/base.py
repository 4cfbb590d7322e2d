"""What every strategy shares: the interface, the params base model, the errors.

A strategy is a pure function of the per-arm sufficient statistics (plus an RNG), so a
hot-swap never loses history and the decider, the simulator and replay agree exactly.
The experiment config stores params as the plain JSON the user gave; a strategy takes
them as its own frozen params model, built once per config by
:func:`bandit_core.strategies.params_for` (when a command is accepted, when the decider
caches a config, when a simulation or an evaluation starts), so every default lives in
the model and a decision reads attributes instead of re-validating a dict.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from bandit_core.adaptive import MAX_HALF_LIFE, MIN_HALF_LIFE
from bandit_core.state import ArmStats
from schemas.events import RewardType

#: Default Monte Carlo sample count for the decider's Thompson propensity estimate.
DECIDER_SAMPLES: Final = 200

#: ``sampler(rng, n)``: ``n`` independent choices (arm indices) from one prepared state.
BatchSampler = Callable[[random.Random, int], list[int]]

#: Scores closer than this are a tie (identical stats give bit-identical scores anyway;
#: this only absorbs float noise from summing rewards in a different order).
TIE_TOLERANCE: Final = 1e-12


class UnknownStrategyError(ValueError):
    """A strategy name that is not registered; the message lists the valid ones."""


class InvalidParamsError(ValueError):
    """Strategy params that break a rule; ``errors`` holds one message per field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class StrategyParams(BaseModel):
    """Base of the per-strategy params models (strict: ``"0.5"`` or ``true`` is no number).

    A field's ``description`` is its rule as error messages state it ("must be ...");
    its default is the strategy's default, defined nowhere else.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="an integer with 0 <= seed < 2**63"
    )

    def as_given(self) -> dict[str, Any]:
        """Only the params that were set, defaults not filled in: what a config stores
        and reports, so a later change of a default reaches experiments that never set it."""
        return self.model_dump(exclude_unset=True)


# Field types that several params models share (the default stays with each model).
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False, description="a number >= 0")]
BetaPrior = Annotated[float, Field(gt=0.0, allow_inf_nan=False, description="a number > 0")]
HalfLife = Annotated[
    float,
    Field(
        ge=MIN_HALF_LIFE,
        le=MAX_HALF_LIFE,
        allow_inf_nan=False,
        description=f"a number between {MIN_HALF_LIFE:g} and {MAX_HALF_LIFE:g} (time units)",
    ),
]
ExplorationRate = Annotated[
    float,
    Field(
        ge=0.0,
        le=0.5,
        allow_inf_nan=False,
        description="a number between 0 and 0.5 (forced exploration rate)",
    ),
]

P = TypeVar("P", bound=StrategyParams)


class Strategy(ABC, Generic[P]):
    """One bandit policy over its params model ``P``. Implementations are stateless
    singletons (see the registry)."""

    name: ClassVar[str]
    params_model: type[P]
    #: The experiments' reward types it learns from (:data:`schemas.events.RewardType`);
    #: an experiment's strategy must support its ``reward_type``.
    reward_types: ClassVar[frozenset[RewardType]] = frozenset({"binary"})

    @abstractmethod
    def exploit(self, stats: Sequence[ArmStats], params: P, rng: random.Random, now: float) -> int:
        """Index of the policy's own pick, without forced exploration."""

    def choose(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: P,
        rng: random.Random,
        now: float,
    ) -> int:
        """Index into ``arm_ids`` of the arm to serve: a forced uniform exploration draw
        (:meth:`exploration`) first, else the policy's own pick (:meth:`exploit`). One
        order of random draws for every policy, so seeded runs stay reproducible."""
        k = check_arms(arm_ids, stats)
        explored = explore_uniformly(self.exploration(params), k, rng)
        if explored is not None:
            return explored
        return self.exploit(stats, params, rng, now)

    @abstractmethod
    def propensities(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: P,
        rng: random.Random,
        now: float,
        samples: int = 1000,
    ) -> list[float]:
        """Probability that :meth:`choose` picks each arm from this state (sums to 1)."""

    def posterior_draws(
        self,
        stats: Sequence[ArmStats],
        params: P,
        rng: random.Random,
        now: float,
        samples: int,
    ) -> npt.NDArray[np.float64] | None:
        """``samples`` joint draws of the arms' values per visitor from the strategy's
        posterior (one row per draw, one column per arm), what the stopping rule reads
        (:func:`bandit_core.stopping.stopping_summary`); ``None``: the strategy has no
        posterior.

        The Thompson family (Beta on the conversion rate) and the continuous samplers
        (value per visitor) have one. Index policies (UCB1, UCB-V, the sliding-window and
        GLR UCBs) and epsilon-greedy keep point estimates and confidence radii, not a
        distribution: they declare none rather than pass a bootstrap off as their belief,
        and ``/stats`` reports no P(best) for them (switch the strategy to a sampler to
        get a stopping verdict; the arm statistics are shared).
        """
        return None

    def exploration(self, params: P) -> float:
        """Probability of a uniformly random arm instead of the policy's own pick (forced
        exploration); none by default."""
        return 0.0

    def batch_sampler(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: P,
        now: float,
    ) -> BatchSampler | None:
        """A function drawing ``n`` independent :meth:`choose` results from this state,
        prepared once (posteriors as arrays), or ``None`` when the strategy does not draw
        them in bulk (the default).

        Only for policies whose choice distribution depends on the stats alone (not on
        ``now``): the decider prepares one sampler per cached snapshot (off its event
        loop) and pre-draws batches with it, serving one choice per request, each still
        an independent draw from that snapshot's policy. Preparing once matters with
        many arms: recomputing 1,000 posteriors per batch cost as much as drawing it.
        """
        return None

    def choose_batch(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: P,
        rng: random.Random,
        now: float,
        n: int,
    ) -> list[int] | None:
        """``n`` independent :meth:`choose` results (:meth:`batch_sampler` used once)."""
        sampler = self.batch_sampler(arm_ids, stats, params, now)
        return None if sampler is None else sampler(rng, n)

    def choose_with_propensity(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: P,
        rng: random.Random,
        now: float,
        samples: int = DECIDER_SAMPLES,
    ) -> tuple[int, float]:
        """The chosen index and the probability of that choice (> 0), for a decision."""
        index = self.choose(arm_ids, stats, params, rng, now)
        return index, self.propensities(arm_ids, stats, params, rng, now, samples)[index]


class ExploringStrategy(Strategy[P]):
    """A strategy whose propensities are those of its own pick
    (:meth:`exploit_propensities`) mixed with forced uniform exploration
    (:meth:`mix_exploration`), as :meth:`~Strategy.choose` draws them: the index
    policies and the Thompson family."""

    def propensities(
        self,
        arm_ids: Sequence[str],
        stats: Sequence[ArmStats],
        params: P,
        rng: random.Random,
        now: float,
        samples: int = 1000,
    ) -> list[float]:
        k = check_arms(arm_ids, stats)
        p = self.exploit_propensities(stats, params, rng, now, samples)
        explore = self.exploration(params)
        return self.mix_exploration(explore, k, p) if explore else p

    @abstractmethod
    def exploit_propensities(
        self, stats: Sequence[ArmStats], params: P, rng: random.Random, now: float, samples: int
    ) -> list[float]:
        """Probability that :meth:`exploit` picks each arm (``samples``: Monte Carlo draws,
        for a policy without a closed form)."""

    def mix_exploration(self, explore: float, k: int, p: list[float]) -> list[float]:
        """``p`` mixed with forced exploration at rate ``explore`` (> 0)."""
        return mix_uniform(explore, k, p)


def check_arms(arm_ids: Sequence[str], stats: Sequence[ArmStats]) -> int:
    """The arm count, after checking the inputs line up (a bug upstream, not user input)."""
    k = len(arm_ids)
    if k == 0:
        raise ValueError("no arms to choose from")
    if len(stats) != k:
        raise ValueError(f"{len(stats)} stats for {k} arms")
    return k


def argmax_set(scores: Sequence[float]) -> list[int]:
    """All indices whose score ties the maximum (callers pick among them at random)."""
    best = max(scores)
    floor = best - TIE_TOLERANCE * max(1.0, abs(best))
    return [i for i, s in enumerate(scores) if s >= floor]


def uniform_over(k: int, chosen: Sequence[int]) -> list[float]:
    """Propensities of a uniform pick among ``chosen`` out of ``k`` arms."""
    p = 1.0 / len(chosen)
    out = [0.0] * k
    for i in chosen:
        out[i] = p
    return out


def pick_tied(best: Sequence[int], rng: random.Random) -> int:
    """One of the tied ``best`` indices, uniformly (no draw when there is one)."""
    return best[0] if len(best) == 1 else rng.choice(best)


def explore_uniformly(rate: float, k: int, rng: random.Random) -> int | None:
    """A uniformly random arm with probability ``rate``, else ``None``.

    A rate of 0 draws nothing, so a policy without forced exploration consumes exactly
    the randomness it did before the option existed (seeded runs stay reproducible).
    """
    if rate and rng.random() < rate:
        return rng.randrange(k)
    return None


def mix_uniform(rate: float, k: int, p: Sequence[float]) -> list[float]:
    """Propensities ``p`` of the policy's own pick, mixed with forced uniform exploration
    at ``rate`` (see :func:`explore_uniformly`)."""
    return [rate / k + (1.0 - rate) * x for x in p]

"""Bandit strategies: pure functions of per-arm statistics plus one long-lived RNG.

Typical use in the decider::

    strategy = get_strategy(config.strategy)
    params = params_for(config.strategy, config.strategy_params)  # once per config
    rng = make_rng(params.seed)                     # once per experiment and process
    index, propensity = strategy.choose_with_propensity(
        config.arm_ids, state.stats_for(config.arm_ids), params, rng, now
    )
"""

from bandit_core.rng import make_rng, numpy_generator
from bandit_core.strategies.base import (
    DECIDER_SAMPLES,
    InvalidParamsError,
    Strategy,
    StrategyParams,
    UnknownStrategyError,
    argmax_set,
)
from bandit_core.strategies.daypart_thompson import DaypartThompson, DaypartThompsonParams
from bandit_core.strategies.discounted_thompson import (
    DiscountedThompson,
    DiscountedThompsonParams,
)
from bandit_core.strategies.epsilon_greedy import EpsilonGreedy, EpsilonGreedyParams
from bandit_core.strategies.gaussian_thompson import GaussianThompson, GaussianThompsonParams
from bandit_core.strategies.glr_thompson import GlrThompson, GlrThompsonParams
from bandit_core.strategies.glr_ucb import GlrUcb, GlrUcbParams
from bandit_core.strategies.registry import (
    STRATEGIES,
    get_strategy,
    normalize_strategy_name,
    params_for,
    validate_params,
)
from bandit_core.strategies.revenue_thompson import (
    DiscountedRevenueThompson,
    DiscountedRevenueThompsonParams,
    RevenueThompson,
    RevenueThompsonParams,
)
from bandit_core.strategies.sw_ucb import SlidingWindowUcb, SlidingWindowUcbParams
from bandit_core.strategies.thompson import Thompson, ThompsonParams
from bandit_core.strategies.ucb1 import Ucb1, Ucb1Params
from bandit_core.strategies.ucb_v import UcbV, UcbVParams

__all__ = [
    "DECIDER_SAMPLES",
    "STRATEGIES",
    "DaypartThompson",
    "DaypartThompsonParams",
    "DiscountedRevenueThompson",
    "DiscountedRevenueThompsonParams",
    "DiscountedThompson",
    "DiscountedThompsonParams",
    "EpsilonGreedy",
    "EpsilonGreedyParams",
    "GaussianThompson",
    "GaussianThompsonParams",
    "GlrThompson",
    "GlrThompsonParams",
    "GlrUcb",
    "GlrUcbParams",
    "InvalidParamsError",
    "RevenueThompson",
    "RevenueThompsonParams",
    "SlidingWindowUcb",
    "SlidingWindowUcbParams",
    "Strategy",
    "StrategyParams",
    "Thompson",
    "ThompsonParams",
    "Ucb1",
    "Ucb1Params",
    "UcbV",
    "UcbVParams",
    "UnknownStrategyError",
    "argmax_set",
    "get_strategy",
    "make_rng",
    "normalize_strategy_name",
    "numpy_generator",
    "params_for",
    "validate_params",
]

"""Strategy names, lookup and params validation.

Validation happens once, when a command is accepted: the original mab-ecommerce-optimizer
stored invalid params and then failed every decision with a 500. Messages name the field
and the rule so the API can return them verbatim in a 4xx.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from bandit_core.strategies.base import (
    InvalidParamsError,
    Strategy,
    StrategyParams,
    UnknownStrategyError,
)
from bandit_core.strategies.daypart_thompson import DaypartThompson
from bandit_core.strategies.discounted_thompson import DiscountedThompson
from bandit_core.strategies.epsilon_greedy import EpsilonGreedy
from bandit_core.strategies.gaussian_thompson import GaussianThompson
from bandit_core.strategies.glr_thompson import GlrThompson
from bandit_core.strategies.glr_ucb import GlrUcb
from bandit_core.strategies.revenue_thompson import DiscountedRevenueThompson, RevenueThompson
from bandit_core.strategies.sw_ucb import SlidingWindowUcb
from bandit_core.strategies.thompson import Thompson
from bandit_core.strategies.ucb1 import Ucb1
from bandit_core.strategies.ucb_v import UcbV

STRATEGIES: Final[dict[str, Strategy[Any]]] = {
    s.name: s
    for s in (
        Thompson(),
        Ucb1(),
        EpsilonGreedy(),
        # adaptive strategies for non-stationary rewards (bandit_core.adaptive)
        DiscountedThompson(),
        SlidingWindowUcb(),
        GlrThompson(),
        GlrUcb(),
        # optional: per-time-of-day statistics for clock-driven winners
        DaypartThompson(),
        # continuous rewards (order values): reward_types = {"continuous"}
        RevenueThompson(),
        GaussianThompson(),
        UcbV(),
        DiscountedRevenueThompson(),
    )
}

#: The original API's ``ACTIVE_STRATEGY`` env values, e.g. ``EPSILON_GREEDY``, also work
#: (case-insensitively); ``-`` and spaces count as ``_``.
_ALIASES: Final[dict[str, str]] = {
    "thompson_sampling": "thompson",
    "epsilon-greedy": "epsilon_greedy",
    "egreedy": "epsilon_greedy",
    # its first version used a CUSUM detector; the GLR test replaced it (adaptive.py)
    "cusum_thompson": "glr_thompson",
}


def normalize_strategy_name(name: str) -> str:
    """The canonical name (``thompson``, ``ucb1``, ``epsilon_greedy``) or UnknownStrategyError."""
    if not isinstance(name, str):
        raise UnknownStrategyError(_unknown_message(name))
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise UnknownStrategyError(_unknown_message(name))
    return key


def _unknown_message(name: object) -> str:
    return f"unknown strategy {name!r} (valid: {', '.join(sorted(STRATEGIES))})"


def get_strategy(name: str) -> Strategy[Any]:
    """The strategy registered under ``name`` (any accepted spelling)."""
    return STRATEGIES[normalize_strategy_name(name)]


def params_for(name: str, params: Mapping[str, Any] | None) -> StrategyParams:
    """The frozen params model of strategy ``name`` for a config's plain JSON params
    (``None``: all defaults), or :class:`InvalidParamsError` with one message per field.

    The one place a params model is built: when a command is accepted
    (:func:`validate_params`), when the decider caches a config, and when a simulation
    or an evaluation starts. Strategies then read attributes whose defaults the model
    holds, so a decision never re-reads a dict.
    """
    strategy = get_strategy(name)
    model: type[StrategyParams] = strategy.params_model
    if params is None:
        return model()
    if not isinstance(params, Mapping):
        raise InvalidParamsError(
            [f"strategy_params: must be an object, got {type(params).__name__}"]
        )
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        allowed = ", ".join(sorted(model.model_fields))
        messages: list[str] = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            if err["type"] == "extra_forbidden":
                messages.append(
                    f"strategy_params.{field}: unknown parameter for {strategy.name} "
                    f"(allowed: {allowed})"
                )
            else:
                info = model.model_fields.get(field)
                rule = (info.description if info is not None else None) or err["msg"].lower()
                messages.append(f"strategy_params.{field}: must be {rule}, got {err['input']!r}")
        raise InvalidParamsError(messages) from None


def validate_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The params as given, type-checked (ints widened to floats), defaults NOT filled in
    (:meth:`StrategyParams.as_given`): ``strategy_params: {}`` stays ``{}`` in responses.
    """
    return params_for(name, params).as_given()

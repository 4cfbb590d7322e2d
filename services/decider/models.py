"""The decider's additions to the API's request models: checks that need the server.

The shapes (fields, types, bounds, descriptions, examples) are defined once in the SDK
(:mod:`mab_client.models`), which the decider serves as its body models. What the SDK
cannot know is added here by subclasses that declare no field, so the OpenAPI document
is the SDK's shape: the strategy names the server runs (the original API's spellings
normalised by :func:`~services.decider.settings.normalize_known_strategy`) and their
params (:func:`bandit_core.strategies.validate_params`), checked before anything is
stored. The server's ``MAB_MAX_ARMS`` is checked by the routes, which hold the settings.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, field_validator, model_validator

from bandit_core.strategies import STRATEGIES, get_strategy, validate_params
from mab_client import models as api
from mab_client.models import ConfigPublic, ExperimentPublic, UnitSettingsPublic
from schemas.events import ExperimentConfig
from services.decider.settings import normalize_known_strategy


class _KnownStrategy(BaseModel):
    """Normalises the strategy name and validates its params before anything is stored.

    Validators only, no field: mixed in after the SDK model, whose fields and config
    (strict, frozen) it keeps.
    """

    @field_validator("strategy", mode="before", check_fields=False)
    @classmethod
    def _strategy(cls, v: object) -> object:
        return normalize_known_strategy(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _params(self) -> Self:
        strategy: str | None = getattr(self, "strategy", None)
        if strategy is not None:
            params = validate_params(strategy, dict(getattr(self, "strategy_params", None) or {}))
            object.__setattr__(self, "strategy_params", params)
        return self


class ExperimentCreate(api.ExperimentCreate, _KnownStrategy):
    __doc__ = api.ExperimentCreate.__doc__


class ConfigUpdate(api.ConfigUpdate, _KnownStrategy):
    __doc__ = api.ConfigUpdate.__doc__


def reward_type_mismatch(strategy: str, reward_type: str) -> str | None:
    """Why ``strategy`` cannot serve an experiment whose rewards are ``reward_type``, or
    ``None``: a Beta-Bernoulli sampler fed order values would learn nonsense (it reads a
    42.5 as 42.5 conversions), so the pair is refused before anything is stored."""
    supported = get_strategy(strategy).reward_types
    if reward_type in supported:
        return None
    fitting = sorted(name for name, s in STRATEGIES.items() if reward_type in s.reward_types)
    return (
        f"strategy {strategy!r} learns from {' and '.join(sorted(supported))} rewards; "
        f"reward_type={reward_type} needs a strategy for {reward_type} rewards "
        f"({', '.join(fitting) if fitting else 'none is installed'})"
    )


def _public_rewards(config: ExperimentConfig) -> dict[str, Any]:
    """The reward settings of an answer: only for a continuous experiment, so a binary
    one is answered in the original API's shape."""
    if config.reward_type == "binary":
        return {}
    return {"reward_type": config.reward_type, "reward_cap": config.reward_cap}


def experiment_public(config: ExperimentConfig, *, units: bool = False) -> ExperimentPublic:
    """The API's view of an experiment's configuration (the window only when it has one;
    the assignment settings with ``units``, for ``GET /experiments/{id}``)."""
    return ExperimentPublic(
        experiment_id=config.experiment_id,
        arm_ids=list(config.arm_ids),
        strategy=config.strategy,
        strategy_params=dict(config.strategy_params),
        version=config.version,
        attribution_window_s=config.attribution_window_s,
        default_reward=None if config.attribution_window_s is None else config.default_reward,
        **_public_rewards(config),
        # The assignment settings are the config's fields of the same names.
        units=UnitSettingsPublic.model_validate(config, from_attributes=True) if units else None,
    )


def config_public(config: ExperimentConfig) -> ConfigPublic:
    """The answer of ``POST /config``: the original API's shape, plus the window and the
    reward settings where the experiment has them."""
    return ConfigPublic(
        experiment_id=config.experiment_id,
        strategy=config.strategy,
        strategy_params=dict(config.strategy_params),
        version=config.version,
        attribution_window_s=config.attribution_window_s,
        default_reward=None if config.attribution_window_s is None else config.default_reward,
        **_public_rewards(config),
    )

"""Request schemas of the decider's HTTP API (the responses are :mod:`mab_client.models`).

The shapes are the original mab-ecommerce-optimizer API's; fields we add (``version``,
``decision_id``, ``propensity``, ``event_id``) are additive, so its clients keep working.
Ids are trimmed and may be any printable text (:mod:`schemas.ids`), as there. Requests
are strict otherwise (unknown fields, NaN rewards, control characters in ids and unknown
strategies are 422) because whatever passes here becomes an immutable event in the log.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from bandit_core.strategies import validate_params
from mab_client.models import ExperimentPublic
from schemas.events import MAX_ATTRIBUTION_WINDOW_S, ExperimentConfig, UserContext
from schemas.ids import MAX_ARMS_CEILING, ArmId, ExperimentId
from services.decider.settings import normalize_known_strategy

_ID_DOC = (
    "1-120 printable characters after trimming surrounding whitespace: spaces, "
    "punctuation (`%`, `:`, `*`, `{`, `}`, `/` …) and accents are fine; control "
    "characters are not."
)
#: Event ids keep a plain charset: they are idempotency keys that clients generate (the
#: original API had none), and a plain token is easy to log, grep and copy.
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

ExperimentIdField = Annotated[ExperimentId, Field(description=f"Experiment id: {_ID_DOC}")]
ArmIdField = Annotated[ArmId, Field(description=f"Arm id: {_ID_DOC}")]
RewardValue = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        strict=True,
        description="Finite number in [0, 1]: 1.0 converted, 0.0 did not, partial credit between.",
    ),
]
StrategyParams = Annotated[
    dict[str, Any] | None,
    Field(description="Strategy parameters, e.g. `epsilon` for epsilon_greedy, `seed`."),
]
EventIdField = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=EVENT_ID_PATTERN,
        description="Optional idempotency key: retries with the same event_id count once.",
    ),
]


def _unique_arms(ids: list[str]) -> list[str]:
    dup = sorted(k for k, n in Counter(ids).items() if n > 1)
    if dup:
        raise ValueError(f"arm_ids must be unique; duplicated: {dup}")
    return ids


#: Arm ids of a request, unique after trimming (the bounds differ per request).
UniqueArmIds = Annotated[list[ArmIdField], AfterValidator(_unique_arms)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _StrategyRequest(_Request):
    """Normalises the strategy name and validates its params before anything is stored."""

    @field_validator("strategy", mode="before", check_fields=False)
    @classmethod
    def _strategy(cls, v: object) -> object:
        return normalize_known_strategy(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _params(self) -> _StrategyRequest:
        strategy: str | None = getattr(self, "strategy", None)
        if strategy is not None:
            params = validate_params(strategy, dict(getattr(self, "strategy_params", None) or {}))
            object.__setattr__(self, "strategy_params", params)
        return self


AttributionWindowField = Annotated[
    float | None,
    Field(
        gt=0,
        le=MAX_ATTRIBUTION_WINDOW_S,
        allow_inf_nan=False,
        description="Attribution window in seconds (Personalizer's reward wait time): a "
        "decision without a reward this long after it is folded once with `default_reward`; "
        "a reward after that is recorded as late and not added. Omitted/null: no window.",
    ),
]
DefaultRewardField = Annotated[
    float,
    Field(ge=0.0, le=1.0, allow_inf_nan=False, description="Reward of an expired decision."),
]


class ExperimentCreate(_StrategyRequest):
    """Body of ``POST /experiments``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "experiment_id": "cta-button-test",
                    "arm_ids": ["blue-button", "green-button", "red-button"],
                    "strategy": "thompson",
                    "strategy_params": {"seed": 42},
                }
            ]
        }
    )

    experiment_id: ExperimentIdField
    arm_ids: UniqueArmIds = Field(
        min_length=2,
        max_length=MAX_ARMS_CEILING,
        description="At least 2 unique arm ids (after trimming), at most the server's "
        "`MAB_MAX_ARMS` (default 1000).",
    )
    strategy: str | None = Field(
        default=None,
        description="`thompson`, `ucb1` or `epsilon_greedy` (the original API's spellings "
        "such as `THOMPSON` accepted); defaults to the server's ACTIVE_STRATEGY.",
    )
    strategy_params: StrategyParams = None
    attribution_window_s: AttributionWindowField = None
    default_reward: DefaultRewardField = 0.0


class ArmsAdd(_Request):
    """Body of ``POST /experiments/{experiment_id}/arms``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"arm_ids": ["orange-button", "purple-button"]}]}
    )

    arm_ids: UniqueArmIds = Field(
        min_length=1,
        max_length=MAX_ARMS_CEILING,
        description="New, unique arm ids, appended in order (the experiment may hold at "
        "most the server's `MAB_MAX_ARMS`, default 1000).",
    )


class ConfigUpdate(_StrategyRequest):
    """Body of ``POST /config``: hot-swap the strategy; arm statistics are kept."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"experiment_id": "cta-button-test", "strategy": "ucb1", "strategy_params": {}}
            ]
        }
    )

    experiment_id: ExperimentIdField
    strategy: str = Field(description="`thompson`, `ucb1` or `epsilon_greedy`.")
    strategy_params: StrategyParams = None
    #: Absent: unchanged; null: the window is removed; a number: the new window.
    attribution_window_s: AttributionWindowField = None
    default_reward: DefaultRewardField | None = None


class RewardCreate(_Request):
    """Body of ``POST /reward``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"experiment_id": "cta-button-test", "arm_id": "green-button", "reward": 1.0},
                {
                    "experiment_id": "cta-button-test",
                    "arm_id": "green-button",
                    "reward": 0.0,
                    "decision_id": "9f1c0e5a7b3d4c2e8f6a1b0c9d8e7f6a.1",
                    "user_context": {"segment": "returning", "device": "mobile"},
                },
            ]
        }
    )

    experiment_id: ExperimentIdField
    arm_id: ArmIdField
    reward: RewardValue
    user_context: UserContext = None
    decision_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The decision this reward answers (from GET /decision): joins, "
        "deduplicates (one reward per decision) and must name the same arm.",
    )
    event_id: EventIdField | None = None


class RewardsCreate(_Request):
    """Body of ``POST /rewards``: a batch of rewards, each shaped like ``POST /reward``'s.

    Items are validated one by one by the route (so a 422 can name each failing item
    by its index); the schema documents them as :class:`RewardCreate`.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rewards": [
                        {"experiment_id": "cta-button-test", "arm_id": "green-button", "reward": 1},
                        {
                            "experiment_id": "cta-button-test",
                            "arm_id": "blue-button",
                            "reward": 0,
                            "event_id": "order-1234",
                        },
                    ]
                }
            ]
        }
    )

    rewards: list[Annotated[Any, WithJsonSchema({"$ref": "#/components/schemas/RewardCreate"})]] = (
        Field(description="1..MAB_MAX_REWARD_BATCH rewards (default limit 1000).")
    )


def experiment_public(config: ExperimentConfig) -> ExperimentPublic:
    """The API's view of an experiment's configuration (the window only when it has one)."""
    return ExperimentPublic(
        experiment_id=config.experiment_id,
        arm_ids=list(config.arm_ids),
        strategy=config.strategy,
        strategy_params=dict(config.strategy_params),
        version=config.version,
        attribution_window_s=config.attribution_window_s,
        default_reward=None if config.attribution_window_s is None else config.default_reward,
    )

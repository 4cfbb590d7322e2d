"""Request and response schemas of the decider's HTTP API.

The shapes are the original mab-ecommerce-optimizer API's; fields we add (``version``,
``decision_id``, ``propensity``, ``event_id``) are additive, so its clients keep working.
Ids are trimmed and may be any printable text (:mod:`schemas.ids`), as there. Requests
are strict otherwise (unknown fields, NaN rewards, control characters in ids and unknown
strategies are 422) because whatever passes here becomes an immutable event in the log.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

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


# --------------------------------------------------------------------------- responses


def _absent(value: object) -> bool:
    return value is None


#: Response fields present only for experiments with a window: without one, responses
#: keep the original API's exact (v1) shape.
PublicWindow = Annotated[
    float | None, Field(default=None, exclude_if=_absent, description="Attribution window.")
]
PublicDefault = Annotated[
    float | None, Field(default=None, exclude_if=_absent, description="Its default reward.")
]


class ExperimentPublic(BaseModel):
    """An experiment's configuration (the v1 shape plus ``version``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "experiment_id": "cta-button-test",
                    "arm_ids": ["blue-button", "green-button", "red-button"],
                    "strategy": "thompson",
                    "strategy_params": {},
                    "version": 1,
                }
            ]
        }
    )

    experiment_id: str
    arm_ids: list[str]
    strategy: str
    strategy_params: dict[str, Any]
    version: int = Field(description="Bumped by every accepted command (create = 1).")
    attribution_window_s: PublicWindow = None
    default_reward: PublicDefault = None

    @classmethod
    def of(cls, config: ExperimentConfig) -> ExperimentPublic:
        return cls(
            experiment_id=config.experiment_id,
            arm_ids=list(config.arm_ids),
            strategy=config.strategy,
            strategy_params=dict(config.strategy_params),
            version=config.version,
            attribution_window_s=config.attribution_window_s,
            default_reward=None if config.attribution_window_s is None else config.default_reward,
        )


class ConfigPublic(BaseModel):
    """Result of a strategy hot-swap (the v1 shape plus ``version``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "experiment_id": "cta-button-test",
                    "strategy": "ucb1",
                    "strategy_params": {},
                    "version": 3,
                }
            ]
        }
    )

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    version: int
    attribution_window_s: PublicWindow = None
    default_reward: PublicDefault = None


class DecisionMetadata(BaseModel):
    arms: list[str] = Field(description="The experiment's arms in insertion order.")


class DecisionPublic(BaseModel):
    """One decision (the v1 shape plus ``decision_id`` and ``propensity``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "experiment_id": "cta-button-test",
                    "arm_id": "green-button",
                    "strategy": "thompson",
                    "metadata": {"arms": ["blue-button", "green-button", "red-button"]},
                    "decision_id": "9f1c0e5a7b3d4c2e8f6a1b0c9d8e7f6a.1",
                    "propensity": 0.41,
                }
            ]
        }
    )

    experiment_id: str
    arm_id: str
    strategy: str
    metadata: DecisionMetadata
    decision_id: str = Field(description="Send it back with the reward to join the two.")
    propensity: float = Field(description="P(policy picks this arm | snapshot), for OPE.")


class RewardPublic(BaseModel):
    """A reward accepted into the event log (the v1 shape plus ``event_id``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "experiment_id": "cta-button-test",
                    "arm_id": "green-button",
                    "strategy": "thompson",
                    "event_id": "3b8e5a0c2d1f4e6a9b7c8d0e1f2a3b4c",
                }
            ]
        }
    )

    status: Literal["ok"] = "ok"
    experiment_id: str
    arm_id: str
    strategy: str
    event_id: str


class RewardsPublic(BaseModel):
    """A batch of rewards accepted into the event log (all of them acknowledged)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ok", "accepted": 2, "event_ids": ["3b8e5a0c", "order-1234"]}]
        }
    )

    status: Literal["ok"] = "ok"
    accepted: int
    event_ids: list[str] = Field(
        description="In request order; retry with these to stay idempotent."
    )


class ArmStatsPublic(BaseModel):
    arm_id: str
    pulls: int = Field(description="Rewards observed.")
    reward_sum: float
    mean: float = Field(description="reward_sum / pulls (0 when no pulls).")
    decisions: int = Field(description="Decisions served (folded from the decisions topic).")
    propensity: float = Field(description="Current probability that the policy picks it.")


class AttributionPublic(BaseModel):
    """Where the experiment's decisions stand with respect to their attribution window."""

    window_s: float | None = Field(default=None, description="The configured window.")
    pending: int = Field(default=0, description="Decisions whose window is still open.")
    defaulted: int = Field(default=0, description="Decisions folded with the default reward.")
    late: int = Field(
        default=0, description="Rewards that came after their decision was defaulted."
    )
    untracked: int = Field(
        default=0, description="Decisions not tracked because too many windows were open."
    )


class StatsPublic(BaseModel):
    """Folded statistics of one experiment, read fresh from Redis."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "experiment_id": "cta-button-test",
                    "strategy": "thompson",
                    "strategy_params": {},
                    "config_version": 1,
                    "snapshot_version": 12,
                    "arms": [
                        {
                            "arm_id": "blue-button",
                            "pulls": 4,
                            "reward_sum": 1.0,
                            "mean": 0.25,
                            "decisions": 5,
                            "propensity": 0.3,
                        },
                        {
                            "arm_id": "green-button",
                            "pulls": 3,
                            "reward_sum": 2.0,
                            "mean": 0.6667,
                            "decisions": 7,
                            "propensity": 0.7,
                        },
                    ],
                    "propensities": {"blue-button": 0.3, "green-button": 0.7},
                }
            ]
        }
    )

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    config_version: int
    snapshot_version: int = Field(description="Events folded so far (0: none yet).")
    arms: list[ArmStatsPublic]
    propensities: dict[str, float]
    attribution: AttributionPublic | None = Field(
        default=None,
        exclude_if=_absent,
        description="Attribution-window counts; absent for experiments that never had a window.",
    )


class HealthPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class ReadyPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ready", "redis": "ok", "kafka": "ok", "auth": "keys"}]
        }
    )

    status: Literal["ready", "not_ready"]
    redis: str
    kafka: str
    auth: Literal["keys", "open"] = Field(
        description="`keys`: admin calls need the admin key; `open` (`MAB_AUTH=open`): they "
        "need none."
    )
    warning: str | None = Field(
        default=None, description="Present in open mode: admin calls are served without a key."
    )


class ErrorPublic(BaseModel):
    """Every non-validation error: a human-readable ``detail``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "experiment 'cta-button-test' not found"}]}
    )

    detail: str

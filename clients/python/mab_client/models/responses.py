"""The answers of the API: every response shape, with its documentation.

The decider serves these classes as its response models (its OpenAPI document is
generated from them, descriptions and examples included), the dashboard reads the API
through them, and a storefront gets them with the SDK, without the server: nothing here
imports anything but pydantic.

Responses ignore fields they do not know (``extra``), so an older client keeps working
against a newer server that adds fields. Shapes are the original mab-ecommerce-optimizer
API's; fields we add (``version``, ``decision_id``, ``propensity``, ``event_id``) are
additive, so its clients keep working too.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from mab_client.models.evaluation import EvaluationPublic
from mab_client.models.limits import AssignmentMode, RewardType, UnitIdStorage
from mab_client.models.result import Result, examples


def new_event_id() -> str:
    """An idempotency key: a retried reward carrying it is counted once by the server."""
    return uuid.uuid4().hex


def _absent(value: object) -> bool:
    return value is None


def omitted_when_none(description: str) -> Any:
    """A field that defaults to ``None`` and is left out of the answer while ``None``: a
    response without it keeps the shape older servers sent, so older clients parse it."""
    return Field(default=None, exclude_if=_absent, description=description)


#: Response fields present only for experiments with a window: without one, responses
#: keep the original API's exact shape.
PublicWindow = Annotated[float | None, omitted_when_none("Attribution window.")]
PublicDefault = Annotated[float | None, omitted_when_none("Its default reward.")]
#: Present only for continuous experiments: a binary one answers in the original shape.
PublicRewardType = Annotated[
    RewardType | None,
    omitted_when_none("`continuous` for an experiment with amounts as rewards."),
]
PublicRewardCap = Annotated[
    float | None, omitted_when_none("The cap its strategy learns from rewards under.")
]


class UnitSettingsPublic(Result):
    """An experiment's visitor-assignment settings (docs/assignment.md)."""

    assignment: AssignmentMode = Field(description="How requests with a unit_id get an arm.")
    sticky_ttl_s: int | None = Field(
        description="Seconds a sticky unit keeps its arm; null: the experiment's life."
    )
    unit_id_storage: UnitIdStorage = Field(
        description="hashed: events and Redis keep a salted digest of unit ids; raw: the ids."
    )
    salt: str = Field(description="Public input of the unit hashes (fixed at creation).")
    min_arm_share: float = Field(description="Traffic floor every arm keeps.")
    allocation_interval_s: int = Field(description="Seconds an allocation version lasts.")


#: The experiment of the OpenAPI examples (the create body and the answers).
EXPERIMENT_EXAMPLE: dict[str, Any] = {
    "experiment_id": "cta-button-test",
    "arm_ids": ["blue-button", "green-button", "red-button"],
    "strategy": "thompson",
}


class ExperimentPublic(Result):
    """An experiment's configuration (the original API's shape plus ``version``)."""

    model_config = examples({**EXPERIMENT_EXAMPLE, "strategy_params": {}, "version": 1})

    experiment_id: str
    arm_ids: list[str]
    strategy: str
    strategy_params: dict[str, Any]
    version: int = Field(description="Bumped by every accepted command (create = 1).")
    attribution_window_s: PublicWindow = None
    default_reward: PublicDefault = None
    reward_type: PublicRewardType = None
    reward_cap: PublicRewardCap = None
    units: UnitSettingsPublic | None = omitted_when_none(
        "Visitor-assignment settings: shown by GET /experiments/{id} (create, "
        "list and /config answer in the original API's shape)."
    )


class ConfigPublic(Result):
    """Result of a strategy hot-swap (the original API's shape plus ``version``)."""

    model_config = examples(
        {
            "experiment_id": "cta-button-test",
            "strategy": "ucb1",
            "strategy_params": {},
            "version": 3,
        }
    )

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    version: int
    attribution_window_s: PublicWindow = None
    default_reward: PublicDefault = None
    reward_type: PublicRewardType = None
    reward_cap: PublicRewardCap = None


class DecisionMetadata(Result):
    arms: list[str] = Field(description="The experiment's arms in insertion order.")


class DecisionPublic(Result):
    """One decision (the original API's shape plus ``decision_id`` and ``propensity``)."""

    model_config = examples(
        {
            "experiment_id": "cta-button-test",
            "arm_id": "green-button",
            "strategy": "thompson",
            "metadata": {"arms": ["blue-button", "green-button", "red-button"]},
            "decision_id": "9f1c0e5a7b3d4c2e8f6a1b0c9d8e7f6a.1",
            "propensity": 0.41,
        }
    )

    experiment_id: str
    arm_id: str
    strategy: str
    metadata: DecisionMetadata
    decision_id: str = Field(description="Send it back with the reward to join the two.")
    propensity: float = Field(
        description="P(policy picks this arm | snapshot), for OPE; with a sticky unit, "
        "the probability at its first assignment."
    )
    unit_id: str | None = omitted_when_none(
        "The request's unit id (trimmed), echoed; absent without one."
    )
    assignment: AssignmentMode | None = omitted_when_none(
        "How this unit's arm was chosen (the experiment's mode); absent without a unit id."
    )

    @property
    def arms(self) -> list[str]:
        """The experiment's arms in insertion order (``metadata.arms``)."""
        return self.metadata.arms


class RewardPublic(Result):
    """A reward accepted into the event log (the original API's shape plus ``event_id``)."""

    model_config = examples(
        {
            "status": "ok",
            "experiment_id": "cta-button-test",
            "arm_id": "green-button",
            "strategy": "thompson",
            "event_id": "3b8e5a0c2d1f4e6a9b7c8d0e1f2a3b4c",
        }
    )

    status: Literal["ok"] = "ok"
    experiment_id: str
    arm_id: str
    strategy: str
    event_id: str


class RewardsPublic(Result):
    """A batch of rewards accepted into the event log (all of them acknowledged)."""

    model_config = examples(
        {"status": "ok", "accepted": 2, "event_ids": ["3b8e5a0c", "order-1234"]}
    )

    status: Literal["ok"] = "ok"
    accepted: int
    event_ids: list[str] = Field(
        description="In request order; retry with these to stay idempotent."
    )


class ExposuresPublic(Result):
    """A batch of exposures accepted (every new one acknowledged by Kafka)."""

    model_config = examples({"status": "ok", "accepted": 2, "duplicates": 1})

    status: Literal["ok"] = "ok"
    accepted: int = Field(description="New exposures, each logged as one decision.")
    duplicates: int = Field(
        description="Exposures whose exposure_id was already reported: not logged again."
    )


class HealthPublic(Result):
    model_config = examples({"status": "ok"})

    status: Literal["ok"] = "ok"


class ReadyPublic(Result):
    model_config = examples({"status": "ready", "redis": "ok", "kafka": "ok", "auth": "keys"})

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


class ErrorPublic(Result):
    """Every non-validation error: a human-readable ``detail``."""

    model_config = examples({"detail": "experiment 'cta-button-test' not found"})

    detail: str


class TimeseriesPoint(Result):
    """One (bucket, arm) with any decision or reward."""

    bucket_start: int = Field(description="Unix seconds, UTC, divisible by the bucket width.")
    arm_id: str
    decisions: int = Field(description="Decisions served in the bucket (by event time).")
    rewards: int = Field(description="Rewards applied (deduplicated, valid ones only).")
    reward_sum: float
    conversion_rate: float | None = Field(description="reward_sum / rewards; null if 0.")
    traffic_share: float | None = Field(
        description="This arm's decisions / all decisions of the bucket; null if 0."
    )


class ChangePointPublic(Result):
    ts: float
    arm_id: str
    detector: str


class WinnerChange(Result):
    bucket_start: int
    from_arm: str
    to_arm: str


class TimeseriesPublic(Result):
    """Per-bucket, per-arm performance of one experiment (contract: docs/timeseries-api.md)."""

    model_config = ConfigDict(
        json_schema_serialization_defaults_required=True,
        json_schema_extra={
            "examples": [
                {
                    "experiment_id": "cta-button-test",
                    "bucket": "hour",
                    "from": 1795795200,
                    "to": 1795881600,
                    "arm_ids": ["blue-button", "green-button", "red-button"],
                    "points": [
                        {
                            "bucket_start": 1795795200,
                            "arm_id": "blue-button",
                            "decisions": 120,
                            "rewards": 118,
                            "reward_sum": 17.0,
                            "conversion_rate": 0.1441,
                            "traffic_share": 0.4,
                        }
                    ],
                    "change_points": [
                        {"ts": 1795801234.5, "arm_id": "red-button", "detector": "cusum"}
                    ],
                    "winner_changes": [
                        {
                            "bucket_start": 1795812000,
                            "from_arm": "blue-button",
                            "to_arm": "red-button",
                        }
                    ],
                }
            ]
        },
    )

    experiment_id: str
    bucket: Literal["hour", "minute"]
    from_: int = Field(alias="from", description="First bucket start (inclusive).")
    to: int = Field(description="End of the range (exclusive), aligned to the bucket.")
    arm_ids: list[str]
    points: list[TimeseriesPoint]
    # The server always sends both lists; a client tolerates a server that computes no
    # markers (an empty list), while the API document keeps them required.
    change_points: list[ChangePointPublic] = Field(default_factory=list)
    winner_changes: list[WinnerChange] = Field(default_factory=list)


# The SDK's names for the responses (the classes above keep the API's schema names).
Experiment = ExperimentPublic
StrategyConfig = ConfigPublic
Decision = DecisionPublic
RewardReceipt = RewardPublic
ChangePoint = ChangePointPublic
Timeseries = TimeseriesPublic
Ready = ReadyPublic
Evaluation = EvaluationPublic

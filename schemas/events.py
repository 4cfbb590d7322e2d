"""The event vocabulary of the product, defined once.

Events are frozen, past-tense facts. Each carries an ``event_id`` (idempotency and
audit), a ``ts`` (seconds since the epoch, the time the fact happened: projections
bucket by it, never by arrival time), a ``schema_version`` for upcasting and a
``type`` tag for the discriminated union.

Experiment events carry the *whole* resulting :class:`ExperimentConfig` with its
version, not just a delta: folding them is then "highest version wins", which is
order-insensitive and makes replay of the experiments topic rebuild exactly the
configuration the decider validated and stored.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mab_client.models import (
    INVALID_USER_CONTEXT,
    MAX_ATTRIBUTION_WINDOW_S,
    REWARD_MAX,
    REWARD_MIN,
    USER_CONTEXT_MAX_BYTES,
    USER_CONTEXT_MAX_KEYS,
    UserContext,
    check_user_context,
)
from schemas.ids import ArmId, ExperimentId, random_hex

__all__ = [
    "INVALID_USER_CONTEXT",
    "MAX_ATTRIBUTION_WINDOW_S",
    "REWARD_MAX",
    "REWARD_MIN",
    "SCHEMA_VERSION",
    "USER_CONTEXT_MAX_BYTES",
    "USER_CONTEXT_MAX_KEYS",
    "AnyEvent",
    "ArmsAdded",
    "ChangePointDetected",
    "DecisionMade",
    "Event",
    "ExperimentConfig",
    "ExperimentCreated",
    "ExperimentEvent",
    "RewardObserved",
    "StrategyChanged",
    "UserContext",
    "check_user_context",
    "new_event_id",
]

SCHEMA_VERSION = 1
# The bounds an API request shares with these events (the reward range, the longest
# attribution window, the user_context limits and its check) are defined once in the
# SDK's models, the lowest layer that needs them: a request there must refuse what an
# event here would.


#: A new event id: 32 random hex digits, like ``uuid4().hex`` but without a syscall per
#: id. The function itself, not a wrapper: the decider calls it per decision.
new_event_id: Final = random_hex


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(
        default_factory=new_event_id,
        min_length=1,
        max_length=64,
        description="Idempotency key: events with the same id are applied once (within "
        "the dedupe horizon). A reward without one gets its log position.",
    )
    ts: float = Field(
        default_factory=time.time,
        description="Unix seconds when it happened (a reward without one gets the "
        "Kafka record's timestamp).",
    )
    schema_version: int = Field(default=SCHEMA_VERSION, description="Record schema version.")
    experiment_id: ExperimentId = Field(
        description="The experiment (also the record key): 1-120 printable characters "
        "after trimming surrounding whitespace."
    )

    @field_validator("ts")
    @classmethod
    def _finite_ts(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError("ts must be a finite, non-negative unix time")
        return v


class ExperimentConfig(BaseModel):
    """The decider's validated configuration of one experiment at one version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment_id: ExperimentId
    arm_ids: tuple[ArmId, ...]
    strategy: str
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    version: int = Field(ge=1, description="Bumped by every accepted command.")
    created_ts: float
    updated_ts: float
    #: Attribution window (Personalizer's "reward wait time", docs/attribution.md): a
    #: decision without a reward this long after it (event time) is folded once with
    #: ``default_reward``. ``None``: no window, decisions wait for rewards forever.
    attribution_window_s: float | None = Field(
        default=None, gt=0, le=MAX_ATTRIBUTION_WINDOW_S, allow_inf_nan=False
    )
    default_reward: float = Field(default=0.0, ge=REWARD_MIN, le=REWARD_MAX, allow_inf_nan=False)


class ExperimentCreated(_Event):
    type: Literal["experiment_created"] = "experiment_created"
    config: ExperimentConfig


class ArmsAdded(_Event):
    type: Literal["arms_added"] = "arms_added"
    added_arm_ids: tuple[ArmId, ...]
    config: ExperimentConfig


class StrategyChanged(_Event):
    type: Literal["strategy_changed"] = "strategy_changed"
    previous_strategy: str
    previous_params: dict[str, Any] = Field(default_factory=dict)
    config: ExperimentConfig


class DecisionMade(_Event):
    """One arm served to one visitor, with what is needed for off-policy evaluation."""

    type: Literal["decision_made"] = "decision_made"
    decision_id: str = Field(min_length=1, max_length=64)
    arm_id: ArmId
    strategy: str
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    propensity: float = Field(gt=0.0, le=1.0)
    config_version: int
    snapshot_version: int
    degraded: bool = False
    #: The experiment's attribution window when this decision was served (``None``:
    #: none). Carried on the decision so the fold never depends on the config at fold
    #: time: replay and the live consumer track exactly the same decisions.
    attribution_window_s: float | None = Field(
        default=None, gt=0, le=MAX_ATTRIBUTION_WINDOW_S, allow_inf_nan=False
    )


class RewardObserved(_Event):
    """A reward for an arm; joined to its decision when ``decision_id`` is given."""

    type: Literal["reward_observed"] = "reward_observed"
    arm_id: ArmId = Field(
        description="The arm rewarded; must be in the experiment (an id like experiment_id)."
    )
    reward: float = Field(
        ge=REWARD_MIN,
        le=REWARD_MAX,
        allow_inf_nan=False,
        description="Finite number in [0, 1]: 1 converted, 0 did not, partial credit between.",
    )
    decision_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The decision rewarded (from GET /decision): one reward per decision, "
        "and it must name the decision's arm.",
    )
    source: str = Field(default="api", max_length=64, description="Who produced it.")
    user_context: UserContext = None


class ChangePointDetected(_Event):
    """An arm's change detector fired: its "since change" statistics restarted.

    Derived from rewards by the fold (so replay recomputes it); folding it is a no-op.
    ``statistic`` is the detector's value when it crossed the threshold (or 0 if unknown).
    """

    type: Literal["change_point_detected"] = "change_point_detected"
    arm_id: ArmId
    detector: str = Field(min_length=1, max_length=64)
    statistic: float = Field(default=0.0, allow_inf_nan=False)


ExperimentEvent = Annotated[
    ExperimentCreated | ArmsAdded | StrategyChanged, Field(discriminator="type")
]
Event = Annotated[
    ExperimentCreated
    | ArmsAdded
    | StrategyChanged
    | DecisionMade
    | RewardObserved
    | ChangePointDetected,
    Field(discriminator="type"),
]
AnyEvent = (
    ExperimentCreated
    | ArmsAdded
    | StrategyChanged
    | DecisionMade
    | RewardObserved
    | ChangePointDetected
)

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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mab_client.models import (
    CAP_NEEDS_CONTINUOUS,
    DEFAULT_ALLOCATION_INTERVAL_S,
    DEFAULT_GUARDRAIL_ALPHA,
    DEFAULT_STICKY_TTL_S,
    DEFAULT_STOP_PROBABILITY,
    FLOOR_SLACK,
    HOLDOUT_SHARE_MAX,
    INVALID_USER_CONTEXT,
    MAX_ALLOCATION_INTERVAL_S,
    MAX_ATTRIBUTION_WINDOW_S,
    MAX_GUARDRAILS,
    MAX_METRICS,
    MAX_STICKY_TTL_S,
    MIN_ALLOCATION_INTERVAL_S,
    REWARD_CEILING,
    REWARD_MAX,
    REWARD_MIN,
    USER_CONTEXT_MAX_BYTES,
    USER_CONTEXT_MAX_KEYS,
    AssignmentMode,
    DecisionIdRef,
    GuardrailSpec,
    MetricSpec,
    MetricValues,
    RewardType,
    UnitIdStorage,
    UserContext,
    check_guardrails,
    check_holdout,
    check_user_context,
)
from schemas.ids import ArmId, ExperimentId, InvalidIdError, UnitId, normalize_id, random_hex

__all__ = [
    "DEFAULT_ALLOCATION_INTERVAL_S",
    "DEFAULT_STICKY_TTL_S",
    "FLOOR_SLACK",
    "INVALID_USER_CONTEXT",
    "MAX_ALLOCATION_INTERVAL_S",
    "MAX_ATTRIBUTION_WINDOW_S",
    "MAX_STICKY_TTL_S",
    "MIN_ALLOCATION_INTERVAL_S",
    "REWARD_CEILING",
    "REWARD_MAX",
    "REWARD_MIN",
    "SCHEMA_VERSION",
    "USER_CONTEXT_MAX_BYTES",
    "USER_CONTEXT_MAX_KEYS",
    "AnyEvent",
    "ArmsAdded",
    "AssignmentMode",
    "ChangePointDetected",
    "DecisionMade",
    "Event",
    "ExperimentConfig",
    "ExperimentCreated",
    "ExperimentEvent",
    "GuardrailBreached",
    "GuardrailSpec",
    "MetricSpec",
    "RewardObserved",
    "RewardType",
    "StrategyChanged",
    "UnitIdStorage",
    "UserContext",
    "WinnerDeclared",
    "check_user_context",
    "new_event_id",
]


def is_absent(value: object) -> bool:
    """The ``exclude_if`` of optional event fields: left out of the record when ``None``
    (:mod:`schemas.wire` writes the same test inline)."""
    return value is None


# --------------------------------------------------------------------------- assignment

#: How a ``DecisionMade`` with a unit was made: the two server modes that assign per
#: unit, or ``local`` (an SDK decided from an allocation and reported the exposure).
#: A per_request decision leaves the field out.
DecisionAssignment = Literal["sticky", "consistent", "local"]
#: Hex digits of a new experiment's salt (64 bits: enough that no two experiments share
#: one, short enough to sit in every allocation response).
SALT_HEX_DIGITS: Final = 16
#: Longest ``exposure_id`` (client-made, like an event id, from which the event id of
#: the exposure's decision is derived).
EXPOSURE_ID_MAX_LEN: Final = 64


def new_salt() -> str:
    """The salt of a new experiment: :data:`SALT_HEX_DIGITS` random hex digits (CSPRNG).

    Public (every allocation response carries it): it decorrelates the assignments of
    experiments that share units, it is not a secret.
    """
    return random_hex()[:SALT_HEX_DIGITS]


#: An optional field of an event that is left out of the record when ``None``, so a
#: record without it stays byte-identical to one written before the field existed and
#: consumers of an older version keep reading it.
def _omitted(description: str, **constraints: Any) -> Any:
    return Field(default=None, exclude_if=is_absent, description=description, **constraints)


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
    # --- visitor assignment (docs/assignment.md); a config written before these fields existed
    # decodes with the defaults below, and its salt is its experiment id ---
    assignment: AssignmentMode = Field(
        default="sticky", description="How requests with a unit id are assigned an arm."
    )
    #: How long a sticky unit keeps its arm; ``None``: the experiment's life.
    sticky_ttl_s: int | None = Field(default=DEFAULT_STICKY_TTL_S, ge=1, le=MAX_STICKY_TTL_S)
    unit_id_storage: UnitIdStorage = Field(
        default="hashed",
        description="hashed: events and Redis carry a salted digest of the unit id "
        "(pseudonymisation); raw: the unit id itself.",
    )
    #: Input of the unit hashes (assignment and token). New experiments get
    #: :func:`new_salt`; configs stored before salts existed read as their experiment id
    #: (the default is never kept: :meth:`_salt_of_older_configs` fills it in).
    salt: str = Field(default="", min_length=1, max_length=120)
    #: Traffic floor: every arm keeps at least this share (``k * f <= 1`` for k arms).
    min_arm_share: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    allocation_interval_s: int = Field(
        default=DEFAULT_ALLOCATION_INTERVAL_S,
        ge=MIN_ALLOCATION_INTERVAL_S,
        le=MAX_ALLOCATION_INTERVAL_S,
        description="Length of an allocation epoch (its version is floor(ts / interval)).",
    )
    # --- reward types (docs/rewards.md); a config written before these fields existed
    # decodes as binary without a cap: the original API's rewards ---
    #: What the rewards are (:data:`RewardType`): binary rewards must lie in [0, 1]
    #: (:func:`bandit_core.fold.reward_rejection`), continuous ones in [0, REWARD_CEILING].
    reward_type: RewardType = "binary"
    #: A continuous experiment's strategy learns from ``min(reward, reward_cap)``
    #: (winsorised: one huge order does not swamp an arm); the log keeps the raw reward.
    reward_cap: float | None = Field(default=None, gt=0, le=REWARD_CEILING, allow_inf_nan=False)
    # --- holdout and stopping (docs/stopping.md), fixed at creation; a config written before
    # these fields existed decodes without a holdout and with the default thresholds ---
    #: The control arm: what the holdout is served (and what guardrails compare with).
    control_arm_id: ArmId | None = None
    #: Share of traffic served ``control_arm_id`` whatever the bandit says.
    holdout_share: float = Field(default=0.0, ge=0.0, le=HOLDOUT_SHARE_MAX, allow_inf_nan=False)
    #: The leader's P(best) at which it is declared the winner.
    stop_probability: float = Field(
        default=DEFAULT_STOP_PROBABILITY, ge=0.5, le=1.0, allow_inf_nan=False
    )
    #: The leader's largest expected loss at which it is declared the winner; ``None``:
    #: :func:`bandit_core.verdict.loss_threshold` of the reward type.
    stop_expected_loss: float | None = Field(
        default=None, ge=0.0, le=REWARD_CEILING, allow_inf_nan=False
    )
    #: Once a winner is declared, the bandit serves it alone (the traffic floor and the
    #: holdout still apply); ``False``: the declaration is informational.
    route_to_winner: bool = False
    # --- guardrails (docs/guardrails.md), fixed at creation, against ``control_arm_id``
    # above; the last fields (the config scripts of services/decider/store.py keep them
    # verbatim from "metrics" on). A config written before they existed decodes without
    # metrics or guardrails ---
    #: The metrics rewards may carry, each with its finite range.
    metrics: tuple[MetricSpec, ...] = Field(default=(), max_length=MAX_METRICS)
    #: Each arm's metric against the control arm's: a proven breach pauses or alerts.
    guardrails: tuple[GuardrailSpec, ...] = Field(default=(), max_length=MAX_GUARDRAILS)
    guardrail_alpha: float = Field(default=DEFAULT_GUARDRAIL_ALPHA, gt=0, lt=1, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _salt_of_older_configs(cls, data: Any) -> Any:
        """A config stored before salts existed has none: its salt is its (trimmed)
        experiment id, so its units hash the same wherever and whenever it is read."""
        if not isinstance(data, dict) or data.get("salt") is not None:
            return data
        experiment_id = data.get("experiment_id")
        if not isinstance(experiment_id, str):
            return data  # the experiment_id's own error says it
        try:
            return {**data, "salt": normalize_id(experiment_id, "experiment_id")}
        except InvalidIdError:
            return data

    @model_validator(mode="after")
    def _floor_fits(self) -> ExperimentConfig:
        """``k * min_arm_share <= 1``: a floor no allocation can give every arm is a
        configuration error (re-checked whenever a config is built, so adding arms to
        an experiment with a floor is refused when the floors would no longer fit)."""
        k = len(self.arm_ids)
        if k * self.min_arm_share > 1.0 + FLOOR_SLACK:
            raise ValueError(
                f"min_arm_share {self.min_arm_share} times {k} arms is "
                f"{k * self.min_arm_share:.6g} > 1: at most {1.0 / k:.6g} with {k} arms"
            )
        return self

    @model_validator(mode="after")
    def _cap_is_continuous(self) -> ExperimentConfig:
        """A cap bounds amounts; a binary reward is at most 1 already, so a cap on a
        binary experiment is a mistake (most likely a forgotten ``reward_type``)."""
        if self.reward_cap is not None and self.reward_type != "continuous":
            raise ValueError(CAP_NEEDS_CONTINUOUS)
        return self

    @property
    def control_index(self) -> int:
        """The control arm's index (0 without one: only read when ``holdout_share > 0``,
        which requires a control arm)."""
        if self.control_arm_id is None:
            return 0
        return self.arm_ids.index(self.control_arm_id)

    @model_validator(mode="after")
    def _holdout_has_control(self) -> ExperimentConfig:
        """A holdout needs a control arm in the experiment (:func:`check_holdout`)."""
        check_holdout(self.arm_ids, self.holdout_share, self.control_arm_id)
        return self

    @model_validator(mode="after")
    def _guardrails_fit(self) -> ExperimentConfig:
        """Guardrails only on declared metrics, against a control arm of the experiment
        (:func:`mab_client.models.check_guardrails`, the request's own rule)."""
        check_guardrails(
            self.arm_ids, self.metrics, self.guardrails, self.control_arm_id, self.guardrail_alpha
        )
        return self


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
    # --- visitor assignment (docs/assignment.md): left out of the record when absent, so a
    # per_request decision without a unit is written byte for byte as before ---
    unit_id: UnitId | None = _omitted(
        "The unit's token (salted digest, or the raw unit id: the experiment's "
        "unit_id_storage). With it, the fold counts the decision id once."
    )
    assignment: DecisionAssignment | None = _omitted("How the unit was assigned its arm.")
    allocation_version: int | None = _omitted(
        "The allocation epoch the arm was drawn from (sticky, consistent, local).", ge=0
    )
    exposure_id: str | None = _omitted(
        "The client's id of a reported local decision (POST /exposures).",
        min_length=1,
        max_length=EXPOSURE_ID_MAX_LEN,
    )
    # --- holdout (docs/stopping.md): left out of the record when absent, so a bandit
    # decision is written byte for byte as before ---
    holdout: Literal[True] | None = _omitted(
        "True when the experiment's holdout served the control arm (whatever the bandit "
        "said); the propensity is then the control's, holdout included."
    )


class RewardObserved(_Event):
    """A reward for an arm; joined to its decision when ``decision_id`` is given."""

    type: Literal["reward_observed"] = "reward_observed"
    arm_id: ArmId = Field(
        description="The arm rewarded; must be in the experiment (an id like experiment_id)."
    )
    # The record's own bound is the ceiling of every experiment; whether a reward above 1
    # fits *its* experiment (binary or continuous) is reward_rejection's rule, which needs
    # the config.
    reward: float = Field(
        ge=REWARD_MIN,
        le=REWARD_CEILING,
        allow_inf_nan=False,
        description="Finite number: in [0, 1] for a binary experiment (1 converted, 0 did "
        f"not, partial credit between), in [0, {REWARD_CEILING:g}] for a continuous one "
        "(an amount such as the order value).",
    )
    decision_id: DecisionIdRef | None = Field(
        default=None,
        description="The decision rewarded (from GET /decision): one reward per decision, "
        "and it must name the decision's arm.",
    )
    source: str = Field(default="api", max_length=64, description="Who produced it.")
    user_context: UserContext = None
    unit_id: UnitId | None = _omitted(
        "The unit's token (as on its decisions); kept for attribution by unit."
    )
    metrics: MetricValues | None = _omitted(
        "Values of the experiment's declared metrics (docs/guardrails.md): each name "
        "declared, each value in its range (checked against the config by the fold)."
    )


class ChangePointDetected(_Event):
    """An arm's change detector fired: its "since change" statistics restarted.

    Derived from rewards by the fold (so replay recomputes it); folding it is a no-op.
    ``statistic`` is the detector's value when it crossed the threshold (or 0 if unknown).
    """

    type: Literal["change_point_detected"] = "change_point_detected"
    arm_id: ArmId
    detector: str = Field(min_length=1, max_length=64)
    statistic: float = Field(default=0.0, allow_inf_nan=False)


class GuardrailBreached(_Event):
    """A guardrail proved an arm worse than the control arm on a metric (docs/guardrails.md).

    Derived from rewards by the fold (so replay recomputes it, and the pause with it);
    folding it is a no-op. Emitted once per (arm, guardrail): ``guardrail`` is the index
    in the config's ``guardrails``. The intervals are the two confidence sequences when
    the breach was proven.
    """

    type: Literal["guardrail_breached"] = "guardrail_breached"
    arm_id: ArmId
    control_arm_id: ArmId
    guardrail: int = Field(ge=0)
    metric: ArmId
    direction: str = Field(min_length=1, max_length=32)
    action: str = Field(min_length=1, max_length=32)
    arm_interval: tuple[float, float]
    control_interval: tuple[float, float]
    arm_samples: int = Field(ge=0)
    control_samples: int = Field(ge=0)


class WinnerDeclared(_Event):
    """The stopping rule declared an arm the winner (docs/stopping.md): its ``P(best)``
    reached the experiment's ``stop_probability`` and its expected loss fell to
    ``stop_expected_loss`` (``threshold``: the value in force, the default resolved).

    Derived from rewards by the fold, at most once per experiment (so replay recomputes
    it); folding it is a no-op. Informational: traffic is not changed by it.
    """

    type: Literal["winner_declared"] = "winner_declared"
    arm_id: ArmId
    p_best: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    expected_loss: float = Field(ge=0.0, allow_inf_nan=False)
    threshold: float = Field(ge=0.0, allow_inf_nan=False)
    #: Rewards folded when it was declared (the check runs at fixed counts of them).
    rewards: int = Field(ge=0)


ExperimentEvent = Annotated[
    ExperimentCreated | ArmsAdded | StrategyChanged, Field(discriminator="type")
]
AnyEvent = (
    ExperimentCreated
    | ArmsAdded
    | StrategyChanged
    | DecisionMade
    | RewardObserved
    | ChangePointDetected
    | GuardrailBreached
    | WinnerDeclared
)
#: Every event, as pydantic validates a record: the union tagged by ``type``.
Event = Annotated[AnyEvent, Field(discriminator="type")]

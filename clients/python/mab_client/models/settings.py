"""The experiment settings' field types: bounds, defaults' docs and the floor's rule.

Shared by the create body (:class:`~mab_client.models.requests.ExperimentCreate`) and the
``/config`` body (:class:`~mab_client.models.requests.ConfigUpdate`), which declare the
same setting with the same type, so a bound or its description is written once. The
settings themselves are documented for users in docs/assignment.md (units), docs/
attribution.md, docs/rewards.md and docs/stopping.md.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mab_client.ids import ArmId
from mab_client.models.limits import (
    DEFAULT_STICKY_TTL_S,
    FLOOR_SLACK,
    HOLDOUT_SHARE_MAX,
    MAX_ALLOCATION_INTERVAL_S,
    MAX_ATTRIBUTION_WINDOW_S,
    MAX_STICKY_TTL_S,
    MIN_ALLOCATION_INTERVAL_S,
    REWARD_CEILING,
    REWARD_MAX,
    REWARD_MIN,
    AssignmentMode,
    RewardType,
    UnitIdStorage,
)

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
    Field(
        ge=REWARD_MIN,
        le=REWARD_MAX,
        allow_inf_nan=False,
        description="Reward of an expired decision.",
    ),
]


AssignmentField = Annotated[
    AssignmentMode,
    Field(
        description="How requests with a `unit_id` get their arm: `sticky` (a unit keeps "
        "its first arm), `consistent` (a hash of the unit onto the current allocation, no "
        "per-unit storage) or `per_request` (a fresh draw per request). Requests without "
        "a `unit_id` always draw per request, as in the original API."
    ),
]
StickyTtlField = Annotated[
    int | None,
    Field(
        ge=1,
        le=MAX_STICKY_TTL_S,
        strict=True,
        description=f"Seconds a sticky unit keeps its arm after its first request (1.."
        f"{MAX_STICKY_TTL_S}, default {DEFAULT_STICKY_TTL_S} = 30 days); null: the "
        "experiment's life.",
    ),
]
UnitIdStorageField = Annotated[
    UnitIdStorage,
    Field(
        description="What events and Redis keep of a unit id: `hashed` (a salted digest, "
        "pseudonymous) or `raw` (the id itself). Fixed at creation."
    ),
]
MinArmShareField = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Traffic floor: every arm keeps at least this share of new units and "
        "of decisions (arms x min_arm_share must be at most 1). 0: none.",
    ),
]
AllocationIntervalField = Annotated[
    int,
    Field(
        ge=MIN_ALLOCATION_INTERVAL_S,
        le=MAX_ALLOCATION_INTERVAL_S,
        strict=True,
        description="Seconds an allocation version lasts (new units are assigned from the "
        f"current one): {MIN_ALLOCATION_INTERVAL_S}..{MAX_ALLOCATION_INTERVAL_S}.",
    ),
]
RewardTypeField = Annotated[
    RewardType,
    Field(
        description="What the rewards are: `binary` (the original API's conversions, each "
        "reward in [0, 1]) or `continuous` (an amount such as the order value, in "
        f"[0, {REWARD_CEILING:g}]). The strategy must learn from this type. Fixed at "
        "creation."
    ),
]
RewardCapField = Annotated[
    float | None,
    Field(
        gt=0,
        le=REWARD_CEILING,
        allow_inf_nan=False,
        description="Continuous experiments only: the strategy learns from "
        "min(reward, reward_cap) (winsorised), while the log keeps the raw reward. "
        "Null: no cap. Fixed at creation.",
    ),
]
# --- holdout and stopping (docs/stopping.md) ---
HoldoutShareField = Annotated[
    float,
    Field(
        ge=0.0,
        le=HOLDOUT_SHARE_MAX,
        allow_inf_nan=False,
        description=f"Share of traffic (0..{HOLDOUT_SHARE_MAX:g}) served the control arm "
        "whatever the bandit says (per unit when a unit id is sent, per request otherwise), "
        "to measure the bandit's uplift. Needs control_arm_id. Fixed at creation.",
    ),
]
ControlArmField = Annotated[
    ArmId | None,
    Field(
        description="The experiment's control arm (one of arm_ids): what the holdout gets. "
        "Fixed at creation."
    ),
]
StopProbabilityField = Annotated[
    float,
    Field(
        ge=0.5,
        le=1.0,
        allow_inf_nan=False,
        description="P(best) the leading arm needs before it is declared the winner. "
        "Fixed at creation.",
    ),
]
StopExpectedLossField = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=REWARD_CEILING,
        allow_inf_nan=False,
        description="Largest expected loss (value per visitor left by stopping on the "
        "leader, in the reward's unit) at which it is declared the winner. Null: 0.001 "
        "for a binary experiment (a tenth of a percentage point of conversion), 1% of the "
        "leader's value per visitor for a continuous one. Fixed at creation.",
    ),
]


def check_floor(arms: int, min_arm_share: float) -> None:
    """``arms * min_arm_share <= 1``: a floor no allocation can give every arm is refused."""
    if arms * min_arm_share > 1.0 + FLOOR_SLACK:
        raise ValueError(
            f"min_arm_share {min_arm_share} times {arms} arms is {arms * min_arm_share:.6g}"
            f" > 1: at most {1.0 / arms:.6g} with {arms} arms"
        )

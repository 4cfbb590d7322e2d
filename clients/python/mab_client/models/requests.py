"""The bodies the API accepts: their fields, types, bounds, descriptions and examples.

Defined once, here: the decider serves these classes as its body models (so its OpenAPI
document is generated from them), its raw hot path validates ``POST /reward`` with
:class:`RewardCreate`, and the SDK builds every request body with them, so a bad id or
an out-of-range reward fails in the caller's process before any network call. Checks
that need the server's knowledge (the strategy names and their params, the server's
``MAB_MAX_ARMS``) are the decider's, added by subclasses that declare no field.

The shapes are the original mab-ecommerce-optimizer API's; fields we add (``event_id``,
``decision_id``, ``user_context`` bounds, attribution windows) are additive, so its
clients keep working. Ids are trimmed and may be any printable text
(:mod:`mab_client.ids`), as there. Requests are strict otherwise (unknown fields, NaN
rewards, control characters in ids are refused) because whatever passes here becomes an
immutable event in the log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from mab_client.ids import MAX_ARMS_CEILING, ArmId, ExperimentId, UnitId
from mab_client.models.guardrails import (
    DEFAULT_GUARDRAIL_ALPHA,
    MAX_GUARDRAILS,
    MAX_METRICS,
    GuardrailSpec,
    MetricSpec,
    MetricValues,
    check_guardrails,
)
from mab_client.models.limits import (
    CAP_NEEDS_CONTINUOUS,
    DEFAULT_ALLOCATION_INTERVAL_S,
    DEFAULT_STICKY_TTL_S,
    DEFAULT_STOP_PROBABILITY,
    REWARD_CEILING,
    REWARD_MIN,
    UserContext,
    check_holdout,
)
from mab_client.models.responses import EXPERIMENT_EXAMPLE, DecisionPublic, new_event_id
from mab_client.models.result import examples
from mab_client.models.settings import (
    AllocationIntervalField,
    AssignmentField,
    AttributionWindowField,
    ControlArmField,
    DefaultRewardField,
    HoldoutShareField,
    MinArmShareField,
    RewardCapField,
    RewardTypeField,
    StickyTtlField,
    StopExpectedLossField,
    StopProbabilityField,
    UnitIdStorageField,
    check_floor,
)

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
#: The bound every experiment shares; the experiment's ``reward_type`` narrows it on the
#: server (a binary experiment answers 422 above 1), which the SDK cannot know.
RewardValue = Annotated[
    float,
    Field(
        ge=REWARD_MIN,
        le=REWARD_CEILING,
        allow_inf_nan=False,
        strict=True,
        description="Finite number. Binary experiments (the default): in [0, 1], 1.0 "
        "converted, 0.0 did not, partial credit between. Continuous experiments: an amount "
        f"in [0, {REWARD_CEILING:g}], e.g. the order value.",
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


#: A decision id as a reward names it (its shape, ``<hex>.<arm index>``, is checked where
#: the arm index is read: a 422 ``bad_decision_id`` names it).
DecisionIdRef = Annotated[str, Field(min_length=1, max_length=64)]


def _unique_arms(ids: list[str]) -> list[str]:
    dup = sorted(k for k, n in Counter(ids).items() if n > 1)
    if dup:
        raise ValueError(f"arm_ids must be unique; duplicated: {dup}")
    return ids


#: Arm ids of a request, unique after trimming (the bounds differ per request).
UniqueArmIds = Annotated[list[ArmIdField], AfterValidator(_unique_arms)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


UnitIdField = Annotated[
    UnitId,
    Field(
        description="The randomisation unit (visitor, session or account id): 1-200 "
        "printable characters after trimming. Send opaque ids, not e-mail addresses.",
        examples=["visitor-8c1f2a"],
    ),
]


class ExperimentCreate(_Request):
    """Body of ``POST /experiments``."""

    model_config = examples({**EXPERIMENT_EXAMPLE, "strategy_params": {"seed": 42}})

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
    assignment: AssignmentField = "sticky"
    sticky_ttl_s: StickyTtlField = DEFAULT_STICKY_TTL_S
    unit_id_storage: UnitIdStorageField = "hashed"
    min_arm_share: MinArmShareField = 0.0
    allocation_interval_s: AllocationIntervalField = DEFAULT_ALLOCATION_INTERVAL_S
    reward_type: RewardTypeField = "binary"
    reward_cap: RewardCapField = None
    # --- holdout and stopping ---
    control_arm_id: ControlArmField = None
    holdout_share: HoldoutShareField = 0.0
    stop_probability: StopProbabilityField = DEFAULT_STOP_PROBABILITY
    stop_expected_loss: StopExpectedLossField = None
    route_to_winner: bool = Field(
        default=False,
        description="Once a winner is declared, serve it alone (the traffic floor and the "
        "holdout still apply). False: the declaration is informational. Fixed at creation.",
    )
    # --- guardrails (docs/guardrails.md): all fixed at creation ---
    metrics: list[MetricSpec] = Field(
        default_factory=list,
        max_length=MAX_METRICS,
        description="Metrics rewards may carry (`metrics` of POST /reward), each with the "
        "finite range [min, max] of its values. Fixed at creation.",
    )
    guardrails: list[GuardrailSpec] = Field(
        default_factory=list,
        max_length=MAX_GUARDRAILS,
        description="Guardrails on declared metrics, each arm against `control_arm_id`: "
        "a breach proven at level `guardrail_alpha` (anytime-valid) pauses the arm or "
        "alerts. Fixed at creation.",
    )
    guardrail_alpha: float = Field(
        default=DEFAULT_GUARDRAIL_ALPHA,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Level of each guardrail's test (the chance an arm that does no harm "
        "is ever flagged, however often it is looked at). Fixed at creation.",
    )

    @model_validator(mode="after")
    def _floor_fits(self) -> ExperimentCreate:
        check_floor(len(self.arm_ids), self.min_arm_share)
        if self.reward_cap is not None and self.reward_type != "continuous":
            raise ValueError(CAP_NEEDS_CONTINUOUS)
        check_guardrails(
            self.arm_ids, self.metrics, self.guardrails, self.control_arm_id, self.guardrail_alpha
        )
        check_holdout(self.arm_ids, self.holdout_share, self.control_arm_id)
        return self


#: Settings fixed when an experiment is created (``POST /config`` refuses them).
FIXED_AT_CREATION = {
    "unit_id_storage": "unit_id_storage cannot change after creation: the tokens already "
    "in the log and the sticky table were made with it (create a new experiment)",
    "salt": "salt cannot change after creation (it is generated at create): every unit "
    "would move to another arm",
    # The live reward consumer checks (and caps) each reward under the config it reads
    # when folding it, replay under the experiment's final config: both agree only if
    # these never change.
    "reward_type": "reward_type cannot change after creation: the rewards already folded "
    "were checked under it, and a replay of the log must fold them the same way (create "
    "a new experiment)",
    "reward_cap": "reward_cap cannot change after creation: the rewards already folded "
    "were capped with it, and a replay of the log must fold them the same way (create a "
    "new experiment)",
    # --- holdout and stopping: the fold splits rewards into holdout and bandit traffic by
    # the control arm and the share, and declares a winner by the stopping thresholds;
    # replay folds the log under the final config, so these never change either.
    "control_arm_id": "control_arm_id cannot change after creation: the holdout's "
    "decisions already logged were served it (create a new experiment)",
    "holdout_share": "holdout_share cannot change after creation: the uplift over the "
    "holdout already folded was measured with it (create a new experiment)",
    "stop_probability": "stop_probability cannot change after creation: a replay of the "
    "log must declare the same winner (create a new experiment)",
    "stop_expected_loss": "stop_expected_loss cannot change after creation: a replay of "
    "the log must declare the same winner (create a new experiment)",
    "route_to_winner": "route_to_winner cannot change after creation, like the stopping "
    "thresholds it acts on (create a new experiment)",
    # Guardrails: the fold keeps per arm and metric a confidence sequence and judges
    # breaches under the config it reads; replay under the final one. Fixed, so both agree.
    **{
        name: f"{name} cannot change after creation: the fold judged the metrics already "
        "logged under it, and a replay of the log must judge them the same way (create a "
        "new experiment)"
        for name in ("metrics", "guardrails", "guardrail_alpha")
    },
}


class ArmsAdd(_Request):
    """Body of ``POST /experiments/{experiment_id}/arms``."""

    model_config = examples({"arm_ids": ["orange-button", "purple-button"]})

    arm_ids: UniqueArmIds = Field(
        min_length=1,
        max_length=MAX_ARMS_CEILING,
        description="New, unique arm ids, appended in order (the experiment may hold at "
        "most the server's `MAB_MAX_ARMS`, default 1000).",
    )


class ConfigUpdate(_Request):
    """Body of ``POST /config``: hot-swap the strategy; arm statistics are kept."""

    model_config = examples(
        {"experiment_id": "cta-button-test", "strategy": "ucb1", "strategy_params": {}}
    )

    experiment_id: ExperimentIdField
    strategy: str = Field(description="`thompson`, `ucb1` or `epsilon_greedy`.")
    strategy_params: StrategyParams = None
    #: Absent: unchanged; null: the window is removed; a number: the new window.
    attribution_window_s: AttributionWindowField = None
    default_reward: DefaultRewardField | None = None
    #: The assignment settings: absent (or null) unchanged, except ``sticky_ttl_s``,
    #: where null means "the experiment's life" (absent: unchanged).
    assignment: AssignmentField | None = None
    sticky_ttl_s: StickyTtlField = None
    min_arm_share: MinArmShareField | None = None
    allocation_interval_s: AllocationIntervalField | None = None

    @model_validator(mode="before")
    @classmethod
    def _fixed_at_creation(cls, data: Any) -> Any:
        """A clear 422 for the settings that never change, rather than "extra field"."""
        if isinstance(data, Mapping):
            for name, why in FIXED_AT_CREATION.items():
                if name in data:
                    raise ValueError(why)
        return data


class RewardCreate(_Request):
    """Body of ``POST /reward``."""

    model_config = examples(
        {"experiment_id": "cta-button-test", "arm_id": "green-button", "reward": 1.0},
        {
            "experiment_id": "cta-button-test",
            "arm_id": "green-button",
            "reward": 0.0,
            "decision_id": "9f1c0e5a7b3d4c2e8f6a1b0c9d8e7f6a.1",
            "user_context": {"segment": "returning", "device": "mobile"},
        },
    )

    experiment_id: ExperimentIdField
    arm_id: ArmIdField
    reward: RewardValue
    user_context: UserContext = None
    decision_id: DecisionIdRef | None = Field(
        default=None,
        description="The decision this reward answers (from GET /decision): joins, "
        "deduplicates (one reward per decision) and must name the same arm.",
    )
    event_id: EventIdField | None = None
    metrics: MetricValues | None = Field(
        default=None,
        description="Values of the experiment's declared metrics for this reward, e.g. "
        '`{"refund": 0, "latency_ms": 180}`: an undeclared name or a value outside its '
        "range is refused (422).",
    )
    unit_id: UnitIdField | None = Field(
        default=None,
        description="The unit rewarded (as sent to GET /decision). Without `decision_id`, "
        "the reward is attributed to the unit's current assignment (sticky, consistent "
        "experiments; 422 if the unit has none or `arm_id` is not its arm).",
    )


class RewardsCreate(_Request):
    """Body of ``POST /rewards``: a batch of rewards, each shaped like ``POST /reward``'s.

    Items are validated one by one by the route (so a 422 can name each failing item
    by its index); the schema documents them as :class:`RewardCreate`.
    """

    model_config = examples(
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
    )

    rewards: list[Annotated[Any, WithJsonSchema({"$ref": "#/components/schemas/RewardCreate"})]] = (
        Field(description="1..MAB_MAX_REWARD_BATCH rewards (default limit 1000).")
    )


#: One exposure as a storefront reports it (the OpenAPI example of both exposure models).
_EXPOSURE_EXAMPLE: dict[str, Any] = {
    "experiment_id": "cta-button-test",
    "unit_id": "visitor-8f14e45f",
    "arm_id": "green-button",
    "allocation_version": 29603160,
    "exposure_id": "a1b2c3d4e5f60718-42",
    "ts": 1776189612.5,
}


class ExposureCreate(_Request):
    """One locally made decision, reported: an item of ``POST /exposures`` and the record
    of the exposures topic (the same JSON either way).

    The server trusts none of it but the ids: it re-derives the arm from its own stored
    allocation ``allocation_version`` (docs/assignment-spec.md) and refuses the item
    when the arm differs, so the logged propensity is always the stored weight.
    """

    model_config = examples(_EXPOSURE_EXAMPLE)

    experiment_id: ExperimentIdField
    unit_id: UnitId
    arm_id: ArmIdField
    allocation_version: int = Field(
        ge=0, strict=True, description="The allocation version the arm was chosen from."
    )
    exposure_id: EventIdField = Field(
        description="The client's idempotency key of this exposure: reported again (a "
        "retried batch), it is a duplicate, not a second decision."
    )
    ts: float = Field(
        ge=0,
        allow_inf_nan=False,
        description="Unix seconds when the unit was shown the arm (the decision's time).",
    )


class ExposuresCreate(_Request):
    """Body of ``POST /exposures``: locally made decisions, all accepted or none.

    Items are validated one by one by the route (a 422 names each failing item by its
    index); the schema documents them as :class:`ExposureCreate`.
    """

    model_config = examples({"exposures": [_EXPOSURE_EXAMPLE]})

    exposures: list[
        Annotated[Any, WithJsonSchema({"$ref": "#/components/schemas/ExposureCreate"})]
    ] = Field(description="1..MAB_MAX_REWARD_BATCH exposures (default limit 1000).")


class RewardItem(RewardCreate):
    """One reward as the SDK sends it (the body of ``POST /reward``, an item of
    ``POST /rewards``): :class:`RewardCreate` with its ``event_id`` always set.

    ``event_id`` is generated when omitted, so resending the same item after a timeout
    or a 503 is deduplicated by the reward consumer instead of counted twice.
    """

    event_id: EventIdField = Field(default_factory=new_event_id)

    @classmethod
    def for_decision(
        cls, decision: DecisionPublic, reward: float, user_context: Mapping[str, Any] | None = None
    ) -> RewardItem:
        """The reward of ``decision``: its experiment, arm and decision id carried through."""
        return cls(
            experiment_id=decision.experiment_id,
            arm_id=decision.arm_id,
            reward=reward,
            decision_id=decision.decision_id,
            user_context=None if user_context is None else dict(user_context),
        )

    def body(self) -> dict[str, Any]:
        """The JSON body: fields left out when unset, as the original API's clients send."""
        return self.model_dump(mode="json", exclude_none=True)

"""Metrics on rewards and the guardrails that watch them (docs/guardrails.md).

Defined in the SDK's lowest layer, like :mod:`mab_client.models.limits`: a request must
refuse what the server's events refuse, in the caller's process. An experiment declares
its metrics with a finite range each (an anytime-valid bound on a mean needs one); a
reward may carry values for them; a guardrail compares an arm's metric with the
control arm's and, once the bad direction is proven at level ``guardrail_alpha``,
pauses the arm or only alerts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mab_client.ids import ArmId

#: Most metrics an experiment declares (each costs a confidence sequence per arm in the
#: fold's snapshot) and most guardrails it sets.
MAX_METRICS: Final = 20
MAX_GUARDRAILS: Final = 20
#: Level of every guardrail's test: the chance that an A/A arm is ever flagged, however
#: often it is looked at.
DEFAULT_GUARDRAIL_ALPHA: Final = 0.05
#: Largest magnitude of a metric's bound (finite, like the reward ceiling).
METRIC_BOUND: Final = 1e9

GuardrailDirection = Literal["increase_is_bad", "decrease_is_bad"]
GuardrailAction = Literal["pause", "alert"]


class MetricSpec(BaseModel):
    """A metric rewards may carry, with the finite range ``[min, max]`` of its values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ArmId = Field(description="The metric's id (the rules of an arm id).")
    min: float = Field(ge=-METRIC_BOUND, le=METRIC_BOUND, allow_inf_nan=False)
    max: float = Field(ge=-METRIC_BOUND, le=METRIC_BOUND, allow_inf_nan=False)

    @model_validator(mode="after")
    def _range(self) -> Self:
        if not self.min < self.max:
            raise ValueError(
                f"metric {self.name!r}: min ({self.min:g}) must be below max ({self.max:g})"
            )
        return self


class GuardrailSpec(BaseModel):
    """One guardrail: ``metric`` may not move in the bad ``direction`` by more than the
    limit (one of ``max_relative_change`` and ``max_absolute_change``) against the control
    arm, judged once both have ``min_samples`` values of the metric."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: ArmId
    direction: GuardrailDirection
    max_relative_change: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    max_absolute_change: float | None = Field(
        default=None, ge=0, le=2 * METRIC_BOUND, allow_inf_nan=False
    )
    min_samples: int = Field(default=100, ge=1, le=10**9)
    action: GuardrailAction = "pause"

    @model_validator(mode="after")
    def _one_limit(self) -> Self:
        if (self.max_relative_change is None) == (self.max_absolute_change is None):
            raise ValueError(
                f"guardrail on {self.metric!r}: give exactly one of max_relative_change "
                "and max_absolute_change"
            )
        return self


def check_guardrails(
    arm_ids: Sequence[str],
    metrics: Sequence[MetricSpec],
    guardrails: Sequence[GuardrailSpec],
    control_arm_id: str | None,
    guardrail_alpha: float,
) -> None:
    """The rules between the settings (one message each, naming the value): unique metric
    names, guardrails only on declared metrics and only with a control arm of the
    experiment, a relative limit only on a metric whose values are >= 0."""
    names = [m.name for m in metrics]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"metrics: duplicate names {dupes}")
    if control_arm_id is not None and control_arm_id not in arm_ids:
        raise ValueError(
            f"control_arm_id {control_arm_id!r} is not an arm of the experiment; arms: "
            f"{list(arm_ids)}"
        )
    if not 0.0 < guardrail_alpha < 1.0 or math.isnan(guardrail_alpha):
        raise ValueError(f"guardrail_alpha must be in (0, 1), got {guardrail_alpha!r}")
    declared = {m.name: m for m in metrics}
    for g in guardrails:
        spec = declared.get(g.metric)
        if spec is None:
            raise ValueError(
                f"guardrail on {g.metric!r}: the metric is not declared in metrics "
                f"(declared: {names})"
            )
        if g.max_relative_change is not None and spec.min < 0:
            raise ValueError(
                f"guardrail on {g.metric!r}: max_relative_change needs a metric with "
                f"min >= 0 (its min is {spec.min:g}); use max_absolute_change"
            )
    if guardrails and control_arm_id is None:
        raise ValueError("guardrails need control_arm_id: the arm each arm is compared with")


def _metric_values(value: dict[str, float]) -> dict[str, float]:
    for name, x in value.items():
        if not math.isfinite(x):
            raise ValueError(f"metric {name!r}: value must be finite, got {x!r}")
    return value


#: A reward's metric values: ``{name: finite number}``, at most :data:`MAX_METRICS`;
#: whether each name is declared and each value in its range is the server's check.
MetricValues = Annotated[
    dict[ArmId, float],
    Field(max_length=MAX_METRICS),
    AfterValidator(_metric_values),
]


def metric_problem(metrics: Sequence[MetricSpec], values: Mapping[str, float]) -> str | None:
    """Why ``values`` do not fit the declared ``metrics`` (an undeclared name, a value
    outside its range), or ``None``."""
    declared = {m.name: m for m in metrics}
    for name, x in values.items():
        spec = declared.get(name)
        if spec is None:
            return (
                f"metric {name!r} is not declared by the experiment "
                f"(declared: {[m.name for m in metrics]})"
            )
        if not spec.min <= x <= spec.max:
            return f"metric {name!r}: value {x!r} is outside its range [{spec.min:g}, {spec.max:g}]"
    return None

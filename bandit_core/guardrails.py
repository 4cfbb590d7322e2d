"""Guardrails: each arm's metrics against the control arm's, with anytime-valid bounds.

Per arm and declared metric the fold keeps a :class:`~bandit_core.stopping.ConfidenceSequence`
over the arm's *own* values of the metric (the rewards of that arm that carry it). Under
stationarity an arm's observations are i.i.d. draws of its distribution whatever the
bandit does with its traffic (the policy only decides *how many* there are, and the
sequence holds at every sample size at once, so a data-dependent count is fine). Each
sequence runs at ``guardrail_alpha / 2``: a breach needs the arm's interval and the
control's to be both right, which by the union bound happens with probability at least
``1 - guardrail_alpha`` at every moment at once. So however often the guardrail is looked
at (here: after every reward with the metric), an arm that does no harm is flagged with
probability at most ``guardrail_alpha``. Several guardrails each hold their own level
(no correction across guardrails: state the level per guardrail).

A breach, with both arms past ``min_samples`` and the bad direction proven:

* ``increase_is_bad``, absolute limit ``d``: ``lower(arm) - upper(control) > d``;
  relative limit ``r``: ``lower(arm) > upper(control) * (1 + r)``;
* ``decrease_is_bad``: ``lower(control) - upper(arm) > d``, or
  ``upper(arm) < lower(control) * (1 - r)``.

Pure, like the fold that calls it: the consumer, replay and the simulator compute the
same breaches from the same log.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, NamedTuple

from bandit_core.stopping import ConfidenceSequence
from schemas.events import ExperimentConfig, GuardrailSpec

#: A guardrail's verdict on one arm (:meth:`GuardrailState.status`).
Verdict = Literal["breached", "ok", "waiting", "control"]


class Breach(NamedTuple):
    """One proven breach: the fold reports it, the consumer publishes it as a
    :class:`~schemas.events.GuardrailBreached` event."""

    arm_id: str
    guardrail: int
    ts: float
    arm_interval: tuple[float, float]
    control_interval: tuple[float, float]
    arm_samples: int
    control_samples: int


def new_sequence(config: ExperimentConfig, metric: str) -> ConfidenceSequence:
    """An empty sequence for ``metric`` (declared in ``config``) at ``guardrail_alpha / 2``."""
    spec = next(m for m in config.metrics if m.name == metric)
    return ConfidenceSequence(alpha=config.guardrail_alpha / 2.0, low=spec.min, high=spec.max)


def breached(
    guardrail: GuardrailSpec, arm: tuple[float, float], control: tuple[float, float]
) -> bool:
    """Whether the intervals prove ``guardrail``'s bad direction beyond its limit."""
    arm_low, arm_high = arm
    control_low, control_high = control
    relative = guardrail.max_relative_change
    absolute = guardrail.max_absolute_change
    if guardrail.direction == "increase_is_bad":
        if absolute is not None:
            return arm_low - control_high > absolute
        assert relative is not None  # GuardrailSpec: exactly one limit
        return arm_low > control_high * (1.0 + relative)
    if absolute is not None:
        return control_low - arm_high > absolute
    assert relative is not None
    return arm_high < control_low * (1.0 - relative)


@dataclass(slots=True)
class GuardrailState:
    """The guardrail part of an experiment's folded state.

    ``sequences[arm][metric]`` is the arm's sequence for the metric; ``breaches`` maps
    ``(arm, guardrail index)`` to the guardrail's action when it was proven: once per
    pair, kept for good (a paused arm stays paused: its later data are too few to
    un-prove a breach, and an experiment should not flip an arm back on its own).
    """

    sequences: dict[str, dict[str, ConfidenceSequence]]
    breaches: dict[tuple[str, int], str]

    @classmethod
    def empty(cls) -> GuardrailState:
        return cls({}, {})

    def copy(self) -> GuardrailState:
        return GuardrailState(
            {
                arm: {m: _clone(cs) for m, cs in metrics.items()}
                for arm, metrics in self.sequences.items()
            },
            dict(self.breaches),
        )

    def __bool__(self) -> bool:
        return bool(self.sequences or self.breaches)

    @property
    def paused(self) -> frozenset[str]:
        """The arms a breach with action ``pause`` took out of the bandit's choice."""
        return frozenset(arm for (arm, _), action in self.breaches.items() if action == "pause")

    def interval(self, arm_id: str, metric: str) -> tuple[tuple[float, float], int] | None:
        """The arm's interval for ``metric`` and its sample count, or ``None`` (no value yet)."""
        cs = self.sequences.get(arm_id, {}).get(metric)
        return None if cs is None else (cs.interval(), cs.n)

    def observe(
        self,
        config: ExperimentConfig,
        arm_id: str,
        values: dict[str, float],
        ts: float,
    ) -> list[Breach]:
        """Fold one reward's metric values (already checked against ``config``) and return
        the breaches they prove: the arm's own guardrails, or every arm's when the arm is
        the control (its bound moved for all of them)."""
        arm_sequences = self.sequences.get(arm_id)
        if arm_sequences is None:
            arm_sequences = self.sequences[arm_id] = {}
        for name, x in values.items():
            cs = arm_sequences.get(name)
            if cs is None:
                cs = arm_sequences[name] = new_sequence(config, name)
            cs.update(x)
        control = config.control_arm_id
        if control is None:
            return []
        found: list[Breach] = []
        for index, guardrail in enumerate(config.guardrails):
            if guardrail.metric not in values:
                continue
            arms = [a for a in config.arm_ids if a != control] if arm_id == control else [arm_id]
            for arm in arms:
                breach = self._judge(config, index, guardrail, arm, control, ts)
                if breach is not None:
                    found.append(breach)
        return found

    def _judge(
        self,
        config: ExperimentConfig,
        index: int,
        guardrail: GuardrailSpec,
        arm_id: str,
        control: str,
        ts: float,
    ) -> Breach | None:
        if arm_id == control or (arm_id, index) in self.breaches:
            return None
        arm_cs = self.sequences.get(arm_id, {}).get(guardrail.metric)
        control_cs = self.sequences.get(control, {}).get(guardrail.metric)
        if arm_cs is None or control_cs is None:
            return None
        if arm_cs.n < guardrail.min_samples or control_cs.n < guardrail.min_samples:
            return None
        arm_interval, control_interval = arm_cs.interval(), control_cs.interval()
        if not breached(guardrail, arm_interval, control_interval):
            return None
        self.breaches[(arm_id, index)] = guardrail.action
        return Breach(arm_id, index, ts, arm_interval, control_interval, arm_cs.n, control_cs.n)

    def status(self, config: ExperimentConfig, index: int, arm_id: str) -> Verdict:
        """Guardrail ``index``'s verdict on ``arm_id``: ``control`` (the arm is the
        control), ``breached``, ``waiting`` (it or the control has fewer than
        ``min_samples`` values) or ``ok`` (not proven)."""
        if arm_id == config.control_arm_id:
            return "control"
        if (arm_id, index) in self.breaches:
            return "breached"
        guardrail = config.guardrails[index]
        counts = [
            cs.n if (cs := self.sequences.get(a, {}).get(guardrail.metric)) is not None else 0
            for a in (arm_id, config.control_arm_id or "")
        ]
        return "waiting" if min(counts) < guardrail.min_samples else "ok"

    # --- snapshot form: {"cs": {arm: {metric: [9 numbers]}}, "breaches": [[arm, i, action]]}
    def to_json(self) -> dict[str, Any]:
        return {
            "cs": {
                arm: {m: _to_list(cs) for m, cs in metrics.items()}
                for arm, metrics in self.sequences.items()
            },
            "breaches": [[arm, index, action] for (arm, index), action in self.breaches.items()],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GuardrailState:
        return cls(
            {
                arm: {m: _from_list(v) for m, v in metrics.items()}
                for arm, metrics in obj.get("cs", {}).items()
            },
            {(str(arm), int(index)): str(action) for arm, index, action in obj.get("breaches", [])},
        )


def _to_list(cs: ConfidenceSequence) -> list[Any]:
    """The sequence's nine numbers in field order (alpha, high, low, n, the sums)."""
    return [getattr(cs, f.name) for f in fields(cs)]


def _from_list(values: list[Any]) -> ConfidenceSequence:
    if len(values) != len(fields(ConfidenceSequence)):
        raise ValueError(f"a confidence sequence needs 9 values, got {len(values)}")
    return ConfidenceSequence(*values)


def _clone(cs: ConfidenceSequence) -> ConfidenceSequence:
    return replace(cs)

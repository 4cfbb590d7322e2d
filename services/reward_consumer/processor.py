"""The snapshot fold as a processor: rewards + decisions -> an experiment's snapshot.

Pure (see :class:`stream_runtime.processor.Processor`): the engine reads, guards,
writes and retries; this module says what a batch of one experiment's events reads
(its config, its snapshot, the dedupe keys and open attribution windows the events
name), and what it makes of them with :func:`bandit_core.fold.fold_into`: the new
snapshot, the attribution windows opened and closed, the counts, the records the fold
rejects (with the text of their dead letters) and the change points its detectors
raised.

The snapshot holds strategy-independent statistics; ``seen`` and ``pending`` are their
own keys, of which a batch loads only the entries its events name: enough for the fold
to decide exactly as it would with the whole sets (the snapshot keeps the exact
``pending_count``), and what keeps a batch's read and write small.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bandit_core.adaptive import GLR_DETECTOR
from bandit_core.fold import (
    APPLIED,
    DUPLICATE,
    LATE,
    ChangePoint,
    Winner,
    fold_into,
    lookup_keys,
    rejection_text,
)
from bandit_core.guardrails import Breach
from bandit_core.state import ExperimentState
from schemas.events import (
    AnyEvent,
    ChangePointDetected,
    DecisionMade,
    ExperimentConfig,
    GuardrailBreached,
    RewardObserved,
    WinnerDeclared,
)
from schemas.rejections import Rejection
from stream_runtime.batch import (
    BatchReport,
    Decoder,
    decode_decision_record,
    decode_reward_record,
)
from stream_runtime.processor import (
    Applied,
    Changes,
    ExperimentProcessor,
    Guard,
    Loaded,
    Reads,
    Skip,
    ZAdd,
    unknown_experiment,
)

log = logging.getLogger("services.reward_consumer")


@dataclass(slots=True)
class FoldReport(BatchReport):
    """What one batch did; the consumer sums these into its running stats."""

    applied: int = 0
    duplicates: int = 0
    late: int = 0  # rewards for decisions already folded with the default reward
    change_points: int = 0
    guardrail_breaches: int = 0
    winners: int = 0


def _derived_id(prefix: str, experiment_id: str, *parts: object) -> str:
    """A deterministic event id ``<prefix>-<experiment>-<part>-...``, or a hash of the same
    parts when that would exceed the 64-character limit."""
    event_id = "-".join([prefix, experiment_id, *(str(p) for p in parts)])
    if len(event_id) > 64:
        joined = "\0".join([experiment_id, *(str(p) for p in parts)])
        event_id = prefix + "-" + hashlib.sha256(joined.encode()).hexdigest()[:48]
    return event_id


def guardrail_event(config: ExperimentConfig, breach: Breach) -> GuardrailBreached:
    """The event of one breach, with a DETERMINISTIC id: ``gb-<experiment>-<arm>-<index>``
    (a breach happens once per arm and guardrail), so a re-folded batch or a replay
    emits the same id and consumers can dedupe on it."""
    guardrail = config.guardrails[breach.guardrail]
    assert config.control_arm_id is not None  # a config with guardrails has a control
    return GuardrailBreached(
        event_id=_derived_id("gb", config.experiment_id, breach.arm_id, breach.guardrail),
        ts=breach.ts,
        experiment_id=config.experiment_id,
        arm_id=breach.arm_id,
        control_arm_id=config.control_arm_id,
        guardrail=breach.guardrail,
        metric=guardrail.metric,
        direction=guardrail.direction,
        action=guardrail.action,
        arm_interval=breach.arm_interval,
        control_interval=breach.control_interval,
        arm_samples=breach.arm_samples,
        control_samples=breach.control_samples,
    )


def change_point_event(experiment_id: str, cp: ChangePoint) -> ChangePointDetected:
    """The event of one detector alarm, with a DETERMINISTIC id.

    ``cp-<experiment>-<arm>-<n>`` (``n``: the arm's change-point count after the alarm)
    is a pure function of the folded log, so a batch that is re-folded after a failed
    publish, or a replay, emits the same id and consumers can dedupe on it. Ids that
    would exceed the 64-character limit are replaced by a hash of the same triple.
    """
    return ChangePointDetected(
        event_id=_derived_id("cp", experiment_id, cp.arm_id, cp.number),
        ts=cp.ts,
        experiment_id=experiment_id,
        arm_id=cp.arm_id,
        detector=GLR_DETECTOR,
        statistic=cp.statistic,
    )


def winner_event(experiment_id: str, winner: Winner) -> WinnerDeclared:
    """The event of the stopping rule's declaration, with a DETERMINISTIC id:
    ``win-<experiment>`` (a hash of the experiment id when longer than 64 characters),
    as there is at most one per experiment; a re-fold or a replay emits the same id."""
    return WinnerDeclared(
        event_id=_derived_id("win", experiment_id),
        ts=winner.ts,
        experiment_id=experiment_id,
        arm_id=winner.arm_id,
        p_best=winner.p_best,
        expected_loss=winner.expected_loss,
        threshold=winner.threshold,
        rewards=winner.rewards,
    )


def fold_lookups(events: Sequence[AnyEvent]) -> tuple[list[str], list[str]]:
    """What the fold will look up for ``events``: the ``seen`` keys
    (:func:`bandit_core.fold.lookup_keys`) and the decision ids whose open attribution
    window it may close or open, each without repeats."""
    keys: dict[str, None] = {}
    ids: dict[str, None] = {}
    for event in events:
        for k in lookup_keys(event):
            keys[k] = None
        if isinstance(event, RewardObserved):
            if event.decision_id is not None:
                ids[event.decision_id] = None
        elif isinstance(event, DecisionMade) and event.attribution_window_s is not None:
            ids[event.decision_id] = None
    return list(keys), list(ids)


def build_state(
    experiment_id: str,
    config: ExperimentConfig,
    snapshot: bytes | None,
    seen: Mapping[str, float],
    pending: Mapping[str, float] | None = None,
) -> ExperimentState:
    """The state the fold starts from: stored snapshot + config key + the batch's views.

    ``seen`` holds only the batch's dedupe keys that are stored already and ``pending``
    only the open attribution windows the batch names; those views are enough for
    :func:`bandit_core.fold.fold_into` to fold this batch exactly as it would with the
    whole sets (the snapshot keeps the exact ``pending_count``).
    """
    state = ExperimentState.from_snapshot(snapshot, experiment_id)
    state.config = config
    state.seen = dict(seen)
    if pending:
        state.pending = dict(pending)
    return state


@dataclass
class SnapshotFold(ExperimentProcessor):
    """The reward consumer's processor (see the module docstring)."""

    name: str = "reward consumer"
    config_log = log

    @property
    def decoders(self) -> Mapping[str, Decoder]:
        return {
            self.topics.rewards: decode_reward_record,
            self.topics.decisions: decode_decision_record,
        }

    def guard(self, experiment_id: str) -> Guard:
        k = self.keys.experiment(experiment_id)
        return Guard(k.offsets, k.seen)

    def new_report(self) -> FoldReport:
        return FoldReport()

    def plan(self, experiment_id: str, events: Sequence[AnyEvent]) -> Reads:
        k = self.keys.experiment(experiment_id)
        seen, ids = fold_lookups(events)
        return Reads(get=(k.config, k.snapshot), members={k.pending: ids}, seen=seen)

    def apply(
        self, experiment_id: str, events: Sequence[AnyEvent], loaded: Loaded, now: float
    ) -> Applied[FoldReport]:
        k = self.keys.experiment(experiment_id)
        report = FoldReport()
        config = self.config(experiment_id, loaded)
        if config is None:
            # Dead-lettered with this text; a redelivery is dead-lettered again, and
            # the DLQ's readers dedupe by source position.
            detail = f"experiment {experiment_id!r} does not exist"
            return unknown_experiment(report, len(events), detail)
        state = build_state(
            experiment_id,
            config,
            loaded.values[k.snapshot],
            loaded.seen,
            loaded.found.get(k.pending),
        )
        result = fold_into(state, events)
        skipped: list[Skip] = []
        for i, outcome in enumerate(result.outcomes):
            if outcome == APPLIED:
                report.applied += 1
            elif outcome == DUPLICATE:
                report.duplicates += 1
            elif outcome == LATE:
                report.late += 1
            else:
                event = events[i]
                reason = Rejection(outcome)
                detail = (
                    rejection_text(reason, event, config)
                    if isinstance(event, RewardObserved)
                    else reason.text  # pragma: no cover - only rewards are rejected by the fold
                )
                skipped.append(Skip(i, reason, detail))
        outputs: list[ChangePointDetected | GuardrailBreached | WinnerDeclared] = [
            change_point_event(experiment_id, cp) for cp in result.change_points
        ]
        report.change_points = len(outputs)
        final = result.state.config
        if result.breaches and final is not None:
            outputs.extend(guardrail_event(final, b) for b in result.breaches)
            report.guardrail_breaches = len(result.breaches)
        if result.winner is not None:
            outputs.append(winner_event(experiment_id, result.winner))
            report.winners = 1
        changes = Changes(
            set={k.snapshot: result.state.snapshot_bytes()},
            publish=[(self.keys.snapshot_channel(), experiment_id)],
        )
        if result.pending_added:
            changes.zadd[k.pending] = ZAdd(result.pending_added)
        if result.pending_removed:
            changes.zrem[k.pending] = result.pending_removed
        return Applied(report, changes, result.new_seen, skipped, outputs)

"""The one pure fold: ``state + events -> state``, shared by consumer, replay and simulator.

No I/O happens here. Exactly-once is built around it, not inside it:

* the reward consumer keeps, atomically with each snapshot, the last applied offset per
  (topic, partition) and only feeds this fold records beyond it, so a redelivered
  record (crash before the Kafka commit, rebalance) is never folded twice;
* independent of offsets, a reward is applied at most once per *dedupe key*: its
  ``decision_id`` (one reward per decision) and its ``event_id`` (a bulk producer that
  retries the same record, or a record sent both over REST and straight to Kafka).
  The keys live in ``state.seen`` with their event time and are forgotten after
  :data:`DEDUPE_HORIZON_S`, a documented bound that keeps the state finite.

Validation that depends on state (unknown experiment, unknown arm, arm differing from
the decision's) also lives here, so the API, the consumer and replay reject exactly the
same records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from bandit_core.adaptive import observe, restart_others
from bandit_core.decision_ids import arm_index_of
from bandit_core.state import ExperimentState
from schemas.events import (
    AnyEvent,
    ArmsAdded,
    ChangePointDetected,
    DecisionMade,
    ExperimentConfig,
    ExperimentCreated,
    RewardObserved,
    StrategyChanged,
)

#: How long a dedupe key is remembered (by event time): 7 days.
DEDUPE_HORIZON_S: Final = 7 * 24 * 3600.0

APPLIED: Final = "applied"
DUPLICATE: Final = "duplicate"
STALE_CONFIG: Final = "stale_config"
#: Outcome of a derived event (a change point): recomputed by the fold, so a no-op.
DERIVED: Final = "derived"


class ChangePoint(NamedTuple):
    """One detector alarm: ``number`` is the arm's ``change_points`` after it (1, 2, ...),
    so ``(arm_id, number)`` names it deterministically across redeliveries and replays."""

    arm_id: str
    ts: float
    statistic: float
    number: int


@dataclass(slots=True)
class FoldResult:
    """The new state, one outcome per input event, the dedupe keys it added, and the
    change points the arms' detectors raised (the consumer publishes each as a
    :class:`~schemas.events.ChangePointDetected` event)."""

    state: ExperimentState
    outcomes: list[str] = field(default_factory=list)
    new_seen: dict[str, float] = field(default_factory=dict)
    change_points: list[ChangePoint] = field(default_factory=list)


def reward_rejection(config: ExperimentConfig | None, event: RewardObserved) -> str | None:
    """Why a reward cannot be applied to an experiment with ``config``, or ``None``.

    The returned label is the DLQ reason and the API's error code.
    """
    if config is None:
        return "unknown_experiment"
    if event.arm_id not in config.arm_ids:
        return "unknown_arm"
    if event.decision_id is not None:
        index = arm_index_of(event.decision_id)
        if index is None:
            return "bad_decision_id"
        if index >= len(config.arm_ids) or config.arm_ids[index] != event.arm_id:
            return "arm_mismatch"
    return None


def dedupe_keys(event: RewardObserved) -> tuple[str, ...]:
    if event.decision_id is not None:
        return ("d:" + event.decision_id, "e:" + event.event_id)
    return ("e:" + event.event_id,)


def _apply(
    state: ExperimentState,
    event: AnyEvent,
    new_seen: dict[str, float],
    change_points: list[ChangePoint],
) -> str:
    if isinstance(event, RewardObserved):
        reason = reward_rejection(state.config, event)
        if reason is not None:
            return reason
        keys = dedupe_keys(event)
        seen = state.seen
        if any(k in seen for k in keys):
            state.duplicates += 1
            return DUPLICATE
        for k in keys:
            seen[k] = event.ts
            new_seen[k] = event.ts
        stats = state.arm(event.arm_id)
        statistic = observe(stats, event.reward, event.ts)
        if statistic is not None:
            # global restart: every arm's since-change statistics (adaptive.observe)
            restart_others(list(state.arms.values()), stats)
            change_points.append(
                ChangePoint(event.arm_id, event.ts, statistic, stats.change_points)
            )
    elif isinstance(event, DecisionMade):
        state.arm(event.arm_id).decisions += 1
    elif isinstance(event, ExperimentCreated | ArmsAdded | StrategyChanged):
        # Highest config version wins: order-insensitive, so replay rebuilds exactly
        # the configuration the decider stored, whatever the delivery order.
        if state.config is not None and state.config.version >= event.config.version:
            return STALE_CONFIG
        state.config = event.config
    elif isinstance(event, ChangePointDetected):
        return DERIVED
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown event {type(event).__name__}")
    state.version += 1
    return APPLIED


def fold_batch(state: ExperimentState, events: Iterable[AnyEvent]) -> FoldResult:
    """Fold ``events`` in order into a copy of ``state``; ``state`` is left untouched."""
    return fold_into(state.copy(), events)


def fold_into(state: ExperimentState, events: Iterable[AnyEvent]) -> FoldResult:
    """Fold ``events`` in order into ``state`` itself (the result's ``state`` is it).

    The same transition as :func:`fold_batch` without the copy: replay owns its states
    and folds a whole log into them chunk by chunk, where copying a state whose ``seen``
    holds every dedupe key of the horizon would cost O(keys) per chunk.
    """
    result = FoldResult(state=state)
    outcomes = result.outcomes
    new_seen = result.new_seen
    change_points = result.change_points
    experiment_id = state.experiment_id
    for event in events:
        if event.experiment_id != experiment_id:
            raise ValueError(f"event of {event.experiment_id!r} folded into {experiment_id!r}")
        outcomes.append(_apply(state, event, new_seen, change_points))
    return result


def fold(state: ExperimentState, event: AnyEvent) -> ExperimentState:
    """Fold one event (the textbook signature; :func:`fold_batch` is the fast path)."""
    return fold_batch(state, (event,)).state


def prune_seen(state: ExperimentState, now_ts: float) -> ExperimentState:
    """Forget dedupe keys older than the horizon (by event time)."""
    cutoff = now_ts - DEDUPE_HORIZON_S
    new = state.copy()
    new.seen = {k: t for k, t in state.seen.items() if t >= cutoff}
    return new

"""Fold one experiment's log in event-time order with the service's pure fold.

This is how off-policy evaluation knows the state a target strategy would have decided
from at each logged decision, and how the audit export knows which rewards counted.

Order: all events of the experiment (config events, decisions, rewards) sorted by their
own ``ts``; at equal times config events come first, then decisions, then rewards, so a
reward stamped with the same time as a decision is *not* part of that decision's state.
Within a kind, equal times keep log order (the sort is stable).

The live reward consumer folds in Kafka order, not event-time order. The two agree on
every statistic that is order-insensitive (counts, sums, decayed sums: see
:mod:`bandit_core.adaptive`) and differ only in which of two records sharing a dedupe
key counts first, and in the exact points where the GLR detector fires.

Dedupe keys are kept for the whole log (the live consumer forgets them after
:data:`bandit_core.fold.DEDUPE_HORIZON_S` of event time; a duplicate arriving later than
that would count live and not here). Like the live consumer, each
:func:`~bandit_core.fold.fold_batch` call sees only the *view* of the dedupe keys its
rewards name, so folding before every one of ``n`` decisions costs ``O(n * arms)``,
not ``O(n²)``.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

from bandit_core.fold import dedupe_keys, fold_batch
from bandit_core.state import ExperimentState
from offpolicy.log import ExperimentLog
from schemas.events import AnyEvent, DecisionMade, RewardObserved

#: Kind order at equal timestamps.
_CONFIG, _DECISION, _REWARD = 0, 1, 2

#: ``hook(i, decision, state)``: ``state`` is folded from every event before decision
#: ``i`` (an index into ``log.decisions``). It must not be mutated.
DecisionHook = Callable[[int, DecisionMade, ExperimentState], None]


@dataclass(frozen=True, slots=True)
class TimelineResult:
    """``outcomes[j]``: the fold's outcome for ``log.rewards[j]``; ``state``: the end state."""

    outcomes: list[str]
    state: ExperimentState


def fold_timeline(
    log: ExperimentLog,
    hook: DecisionHook | None = None,
    hook_decisions: Container[int] | None = None,
) -> TimelineResult:
    """Fold the whole log; call ``hook`` before each decision in ``hook_decisions``
    (all of them when ``None``).

    Events between two hooked decisions are folded in one batch, so an export (no hook)
    is a single fold call.
    """
    entries: list[tuple[float, int, int]] = [
        (e.ts, _CONFIG, k) for k, e in enumerate(log.config_events)
    ]
    entries += [(d.ts, _DECISION, i) for i, d in enumerate(log.decisions)]
    entries += [(r.ts, _REWARD, j) for j, r in enumerate(log.rewards)]
    entries.sort()

    state = ExperimentState(experiment_id=log.experiment_id)
    seen: dict[str, float] = {}
    outcomes = [""] * len(log.rewards)
    pending: list[AnyEvent] = []
    pending_rewards: list[int] = []  # reward index per pending event, -1 for others

    def flush() -> ExperimentState:
        if not pending:
            return state
        view: dict[str, float] = {}
        for event in pending:
            if isinstance(event, RewardObserved):
                for key in dedupe_keys(event):
                    if key in seen:
                        view[key] = seen[key]
        state.seen = view
        result = fold_batch(state, pending)
        for j, outcome in zip(pending_rewards, result.outcomes, strict=True):
            if j >= 0:
                outcomes[j] = outcome
        seen.update(result.new_seen)
        new = result.state
        new.seen = {}
        pending.clear()
        pending_rewards.clear()
        return new

    for _, kind, k in entries:
        if kind == _CONFIG:
            pending.append(log.config_events[k])
            pending_rewards.append(-1)
        elif kind == _REWARD:
            pending.append(log.rewards[k])
            pending_rewards.append(k)
        else:
            decision = log.decisions[k]
            if hook is not None and (hook_decisions is None or k in hook_decisions):
                state = flush()
                hook(k, decision, state)
            pending.append(decision)
            pending_rewards.append(-1)
    state = flush()
    return TimelineResult(outcomes=outcomes, state=state)

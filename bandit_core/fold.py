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

A decision with a unit (``DecisionMade.unit_id``: the sticky, consistent and local
modes) is counted once per *decision id*, under the ``seen`` key ``u:<decision_id>``
with the same horizon: the consistent mode logs every request of a unit under the id
of its (unit, allocation version), so a repeat is a ``duplicate``, not a second pull.
A unit itself is counted once, at its first decision, under the ``seen`` key
``n:<unit token>`` (same horizon): that decision adds to its arm's ``units`` (unique
units, by the arm they first got) and, when it names its allocation version, to the
state's per-version SRM counts. Counting a unit at its first exposure only is what
makes the SRM check valid in every mode: a first exposure under version ``v`` is a draw
from ``v``'s weights, while a consistent unit seen again under later versions keeps an
arm correlated with its earlier one.

Validation that depends on state (unknown experiment, unknown arm, arm differing from
the decision's) also lives here, so the API, the consumer and replay reject exactly the
same records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from bandit_core.adaptive import observe, restart_others
from bandit_core.decision_ids import arm_index_of, is_holdout_id
from bandit_core.guardrails import Breach
from bandit_core.state import ExperimentState
from bandit_core.uplift import Uplift
from bandit_core.verdict import check_seed, is_check, verdict
from mab_client.models import metric_problem
from schemas.events import (
    REWARD_MAX,
    REWARD_MIN,
    AnyEvent,
    ArmsAdded,
    ChangePointDetected,
    DecisionMade,
    ExperimentConfig,
    ExperimentCreated,
    GuardrailBreached,
    RewardObserved,
    StrategyChanged,
    WinnerDeclared,
)
from schemas.rejections import Rejection

#: How long a dedupe key is remembered (by event time): 7 days.
DEDUPE_HORIZON_S: Final = 7 * 24 * 3600.0

APPLIED: Final = "applied"
DUPLICATE: Final = "duplicate"
#: A reward for a decision whose attribution window was already closed with the default.
LATE: Final = "late"
#: ``source`` of the default rewards the reward consumer logs for expired windows.
DEFAULT_SOURCE: Final = "attribution_default"
#: Open attribution windows kept per experiment (see :func:`_track`).
MAX_PENDING: Final = 200_000
STALE_CONFIG: Final = "stale_config"
#: Outcome of a derived event (a change point): recomputed by the fold, so a no-op.
DERIVED: Final = "derived"


class Winner(NamedTuple):
    """The stopping rule's declaration (:mod:`bandit_core.verdict`): the consumer
    publishes it as a :class:`~schemas.events.WinnerDeclared` event."""

    arm_id: str
    ts: float
    p_best: float
    expected_loss: float
    threshold: float
    rewards: int


class ChangePoint(NamedTuple):
    """One detector alarm: ``number`` is the arm's ``change_points`` after it (1, 2, ...),
    so ``(arm_id, number)`` names it deterministically across redeliveries and replays."""

    arm_id: str
    ts: float
    statistic: float
    number: int


@dataclass(slots=True)
class FoldResult:
    """The new state, one outcome per input event, the dedupe keys it added, the
    change points the arms' detectors raised (the consumer publishes each as a
    :class:`~schemas.events.ChangePointDetected` event) and the changes of the pending
    set (the consumer writes them next to the snapshot)."""

    state: ExperimentState
    outcomes: list[str] = field(default_factory=list)
    new_seen: dict[str, float] = field(default_factory=dict)
    change_points: list[ChangePoint] = field(default_factory=list)
    #: Guardrail breaches the batch proved (the consumer publishes each as a
    #: :class:`~schemas.events.GuardrailBreached` event).
    breaches: list[Breach] = field(default_factory=list)
    #: Open attribution windows the batch added (id -> deadline) and closed (ids).
    pending_added: dict[str, float] = field(default_factory=dict)
    pending_removed: list[str] = field(default_factory=list)
    #: The winner the stopping rule declared in this batch (at most once per experiment).
    winner: Winner | None = None


def reward_rejection(config: ExperimentConfig | None, event: RewardObserved) -> Rejection | None:
    """Why a reward cannot be applied to an experiment with ``config``, or ``None``.

    The label is the DLQ reason and the API's error code; :func:`rejection_text` says it
    for this reward. The record's schema already bounds every reward to
    ``[0, REWARD_CEILING]`` (NaN, infinities and negatives never get here); the
    experiment's ``reward_type`` narrows it: a binary experiment takes [0, 1] only, so a
    revenue amount sent to a conversion experiment is refused, not learnt as a "conversion"
    of 42.5. The label is the one a reward above 1 got from the schema before continuous
    rewards existed, so DLQ counts keep their meaning.
    """
    if config is None:
        return Rejection.UNKNOWN_EXPERIMENT
    if event.arm_id not in config.arm_ids:
        return Rejection.UNKNOWN_ARM
    if event.reward > REWARD_MAX and config.reward_type == "binary":
        return Rejection.REWARD_OUT_OF_RANGE
    if event.decision_id is not None:
        index = arm_index_of(event.decision_id)
        if index is None:
            return Rejection.BAD_DECISION_ID
        if index >= len(config.arm_ids) or config.arm_ids[index] != event.arm_id:
            return Rejection.ARM_MISMATCH
    if event.metrics and metric_problem(config.metrics, event.metrics) is not None:
        return Rejection.BAD_METRIC
    return None


def rejection_text(
    reason: Rejection, event: RewardObserved, config: ExperimentConfig | None
) -> str:
    """Why this reward was rejected, naming its ids: the API's 422 message and the
    dead letter's detail (the generic meaning of a label is :attr:`Rejection.text`)."""
    if reason is Rejection.UNKNOWN_EXPERIMENT or config is None:
        return f"experiment {event.experiment_id!r} does not exist"
    if reason is Rejection.UNKNOWN_ARM:
        return (
            f"arm {event.arm_id!r} is not in experiment {event.experiment_id!r}; "
            f"arms: {list(config.arm_ids)}"
        )
    if reason is Rejection.ARM_MISMATCH:
        index = arm_index_of(event.decision_id or "")
        served = config.arm_ids[index] if index is not None and index < len(config.arm_ids) else "?"
        return (
            f"decision {event.decision_id!r} served arm {served!r}, "
            f"but the reward names {event.arm_id!r}"
        )
    if reason is Rejection.BAD_DECISION_ID:
        return f"decision_id {event.decision_id!r} was not issued by this service"
    if reason is Rejection.BAD_METRIC:
        problem = metric_problem(config.metrics, event.metrics or {})
        return f"experiment {event.experiment_id!r}: {problem or reason.text}"
    if reason is Rejection.REWARD_OUT_OF_RANGE:
        return (
            f"reward {event.reward!r} is outside [{REWARD_MIN:g}, {REWARD_MAX:g}] for a "
            f"{config.reward_type} experiment (reward_type={config.reward_type})"
        )
    return f"reward rejected: {reason.text}"


def dedupe_keys(event: RewardObserved) -> tuple[str, ...]:
    if event.decision_id is not None:
        return ("d:" + event.decision_id, "e:" + event.event_id)
    return ("e:" + event.event_id,)


def _apply(state: ExperimentState, event: AnyEvent, result: FoldResult) -> str:
    if isinstance(event, RewardObserved):
        reason = reward_rejection(state.config, event)
        if reason is not None:
            return reason
        # Dedupe, written out (this runs per reward): the record itself again (``e:``),
        # a second reward for the same decision (``d:``), or a reward for a decision
        # whose attribution window closed with the default (``x:``: late, see below).
        seen = state.seen
        new_seen = result.new_seen
        ts = event.ts
        ekey = "e:" + event.event_id
        did = event.decision_id
        if ekey in seen:
            state.duplicates += 1
            return DUPLICATE
        if did is not None:
            dkey = "d:" + did
            if dkey in seen:
                state.duplicates += 1
                return DUPLICATE
            if "x:" + did in seen:
                # The decision was already folded with the default reward: this one is
                # recorded (counted late, its keys kept so a retry is a duplicate) and
                # never added a second time.
                seen[dkey] = seen[ekey] = new_seen[dkey] = new_seen[ekey] = ts
                state.late += 1
                state.version += 1
                return LATE
            if event.source == DEFAULT_SOURCE:
                # The default closes the window: marked ``x:`` instead of ``d:``, so a
                # real reward that comes after it in the log is told apart as late.
                xkey = "x:" + did
                seen[xkey] = seen[ekey] = new_seen[xkey] = new_seen[ekey] = ts
                state.defaulted += 1
            else:
                seen[dkey] = seen[ekey] = new_seen[dkey] = new_seen[ekey] = ts
            if did in state.pending:
                _settle(state, did, result)
        else:
            seen[ekey] = new_seen[ekey] = ts
        arm_id = event.arm_id
        stats = state.arms.get(arm_id)
        if stats is None:
            stats = state.arm(arm_id)
        # Winsorised learning: a continuous experiment with a ``reward_cap`` learns from
        # min(reward, cap), so one outsized order cannot make an arm look best for a long
        # time; the event (and the projector's sums) keep the raw amount. The live
        # consumer folds under the config it reads now, replay under the final one: the
        # cap (like reward_type) is fixed at creation, so both cap every reward alike.
        reward = event.reward
        config = state.config  # never None here: reward_rejection refused that
        cap = None if config is None else config.reward_cap
        if cap is not None and reward > cap:
            reward = cap
        if did is not None and config is not None and config.holdout_share > 0.0:
            # One visitor's outcome, split by its decision id's holdout mark (the reward
            # alone says it: its decision may be folded later). holdout_share and the
            # cap are fixed at creation, so live and replay split and bound alike.
            uplift = state.uplift
            if uplift is None:
                uplift = state.uplift = Uplift.for_config(config)
            uplift.observe(is_holdout_id(did), reward)
        statistic = observe(stats, reward, ts)
        if statistic is not None:
            # soft global restart: every other arm keeps at most 48 observations of its
            # since-change statistics (adaptive.restart_others)
            restart_others(list(state.arms.values()), stats)
            result.change_points.append(ChangePoint(arm_id, ts, statistic, stats.change_points))
        if event.metrics and config is not None:
            # Guardrails: the metric settings are fixed at creation (like the cap), so
            # the live consumer and replay judge every value under the same ranges.
            result.breaches.extend(state.guard.observe(config, arm_id, event.metrics, ts))
        state.rewards += 1
        if state.winner is None and is_check(state.rewards):
            _check_winner(state, ts, result)
    elif isinstance(event, DecisionMade):
        arm_id = event.arm_id
        unit = event.unit_id
        if unit is not None:
            # A unit decision counts once per decision id (the consistent mode logs a
            # unit's every request under one id per allocation version; an exposure
            # may be reported twice): a repeat is a duplicate, not another pull.
            ukey = "u:" + event.decision_id
            if ukey in state.seen:
                state.duplicates += 1
                return DUPLICATE
            state.seen[ukey] = result.new_seen[ukey] = event.ts
        stats = state.arms.get(arm_id)
        if stats is None:
            stats = state.arm(arm_id)
        stats.decisions += 1
        if unit is not None:
            nkey = "n:" + unit
            if nkey not in state.seen:
                state.seen[nkey] = result.new_seen[nkey] = event.ts
                stats.units += 1
                if event.allocation_version is not None:
                    state.count_unit(event.allocation_version, arm_id)
        window = event.attribution_window_s
        if window is not None:
            _track(state, event.decision_id, event.ts + window, result)
    elif isinstance(event, ExperimentCreated | ArmsAdded | StrategyChanged):
        # Highest config version wins: order-insensitive, so replay rebuilds exactly
        # the configuration the decider stored, whatever the delivery order.
        if state.config is not None and state.config.version >= event.config.version:
            return STALE_CONFIG
        state.config = event.config
    elif isinstance(event, ChangePointDetected | GuardrailBreached | WinnerDeclared):
        return DERIVED
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown event {type(event).__name__}")
    state.version += 1
    return APPLIED


def _check_winner(state: ExperimentState, ts: float, result: FoldResult) -> None:
    """The stopping rule's check after ``state.rewards`` rewards: at fixed counts, with
    draws seeded by the count and "now" the reward's time, so live batches and replay
    chunks declare the same winner at the same reward (:mod:`bandit_core.verdict`)."""
    found = verdict(state, ts, check_seed(state.experiment_id, state.rewards))
    if found is None or found.winner is None:
        return
    index = found.winner
    arm_id = found.arm_ids[index]
    state.winner = arm_id
    result.winner = Winner(
        arm_id,
        ts,
        found.summary.p_best[index],
        found.summary.expected_loss[index],
        found.threshold,
        state.rewards,
    )


def _track(state: ExperimentState, decision_id: str, deadline: float, result: FoldResult) -> None:
    """Remember a decision whose attribution window is open, unless it is settled.

    A decision may be folded *after* its reward (or its default): the two come from
    different topics, and the consumer reads them in whatever interleaving the broker
    delivers. Its ``d:``/``x:`` key then says it is settled. So the pending set is
    "decisions folded minus decisions rewarded", whatever the interleaving, which is
    what makes replay rebuild the same set. Beyond :data:`MAX_PENDING` open decisions
    the new one is not tracked (counted in ``untracked``; it simply never gets a
    default): a bound on the snapshot, documented in docs/attribution.md.
    """
    seen = state.seen
    if "d:" + decision_id in seen or "x:" + decision_id in seen:
        return
    pending = state.pending
    if decision_id in pending:
        return
    if state.pending_count >= MAX_PENDING:
        state.untracked += 1
        return
    pending[decision_id] = deadline
    state.pending_count += 1
    result.pending_added[decision_id] = deadline


def _settle(state: ExperimentState, decision_id: str, result: FoldResult) -> None:
    """A pending decision got its reward (or its default): its window is closed."""
    del state.pending[decision_id]
    state.pending_count -= 1
    if result.pending_added.pop(decision_id, None) is None:
        result.pending_removed.append(decision_id)


def lookup_keys(event: AnyEvent) -> tuple[str, ...]:
    """The ``seen`` keys :func:`fold_batch` reads for ``event`` (the live consumer loads
    exactly these from Redis before folding a batch)."""
    if isinstance(event, RewardObserved):
        if event.decision_id is not None:
            did = event.decision_id
            return ("d:" + did, "e:" + event.event_id, "x:" + did)
        return ("e:" + event.event_id,)
    if isinstance(event, DecisionMade):
        did = event.decision_id
        unit = event.unit_id
        if event.attribution_window_s is not None:
            if unit is not None:
                return ("u:" + did, "n:" + unit, "d:" + did, "x:" + did)
            return ("d:" + did, "x:" + did)
        if unit is not None:
            return ("u:" + did, "n:" + unit)
    return ()


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
    experiment_id = state.experiment_id
    for event in events:
        if event.experiment_id != experiment_id:
            raise ValueError(f"event of {event.experiment_id!r} folded into {experiment_id!r}")
        outcomes.append(_apply(state, event, result))
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

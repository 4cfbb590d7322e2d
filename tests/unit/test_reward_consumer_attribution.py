"""Attribution windows in the pure fold: pending, default, late, and interleaving.

Scenario: decisions served with a window, rewards joined to them, defaults logged for
expired windows, rewards after the default, rewards without a decision id, and every way the
consumer may interleave the decisions and rewards topics.
We expect: a decision is settled once (by its reward or its default), a reward after the
default is counted late and never added, the pending set and every statistic are the
same for any interleaving and for the live consumer's per-batch views of Redis.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bandit_core.fold as fold_module
from bandit_core.fold import (
    APPLIED,
    DEFAULT_SOURCE,
    DUPLICATE,
    LATE,
    fold_batch,
    fold_into,
    lookup_keys,
)
from bandit_core.state import ExperimentState
from schemas.events import AnyEvent, DecisionMade, ExperimentConfig, RewardObserved
from services.reward_consumer.attribution import AttributionSweeper, default_reward_event
from services.reward_consumer.processor import build_state
from tests.fixtures.events import config_of, decision_of

pytestmark = pytest.mark.unit

EXP = "shop"
ARMS = ("a", "b")
WINDOW = 60.0


def config(window: float | None = WINDOW, default: float = 0.0) -> ExperimentConfig:
    return config_of(EXP, ARMS, ts=0.0, attribution_window_s=window, default_reward=default)


def decision(index: int, ts: float, window: float | None = WINDOW) -> DecisionMade:
    return decision_of(EXP, ARMS[index], index, ts, attribution_window_s=window)


def reward_for(d: DecisionMade, value: float, ts: float) -> RewardObserved:
    return RewardObserved(
        experiment_id=EXP, arm_id=d.arm_id, reward=value, decision_id=d.decision_id, ts=ts
    )


def default_for(d: DecisionMade, cfg: ExperimentConfig | None = None) -> RewardObserved:
    event = default_reward_event(cfg or config(), d.decision_id, d.ts + WINDOW)
    assert event is not None
    return event


def state() -> ExperimentState:
    return ExperimentState(experiment_id=EXP, config=config())


def test_reward_in_time_settles_the_window() -> None:
    d = decision(0, 100.0)
    r = fold_batch(state(), [d])
    assert r.state.pending == {d.decision_id: 160.0}
    assert r.state.pending_count == 1
    assert r.pending_added == {d.decision_id: 160.0}
    r2 = fold_batch(r.state, [reward_for(d, 1.0, 130.0)])
    assert r2.outcomes == [APPLIED]
    assert r2.state.pending == {}
    assert r2.state.pending_count == 0
    assert r2.pending_removed == [d.decision_id]
    assert r2.state.arms["a"].pulls == 1
    assert r2.state.arms["a"].reward_sum == 1.0


def test_default_then_late_reward_is_recorded_not_added() -> None:
    cfg = config(default=0.0)
    d = decision(1, 100.0)
    dflt = default_for(d, cfg)
    assert (dflt.source, dflt.reward, dflt.ts, dflt.arm_id) == (DEFAULT_SOURCE, 0.0, 160.0, "b")
    late = reward_for(d, 1.0, 200.0)
    again = reward_for(d, 1.0, 201.0)
    r = fold_batch(state(), [d, dflt, late, again, late])
    assert r.outcomes == [APPLIED, APPLIED, LATE, DUPLICATE, DUPLICATE]
    s = r.state
    assert (s.defaulted, s.late, s.pending_count) == (1, 1, 0)
    assert (s.arms["b"].pulls, s.arms["b"].reward_sum) == (1, 0.0)  # the default only
    assert "x:" + d.decision_id in r.new_seen


def test_reward_then_default_keeps_the_reward() -> None:
    d = decision(0, 100.0)
    r = fold_batch(state(), [d, reward_for(d, 1.0, 110.0), default_for(d)])
    assert r.outcomes == [APPLIED, APPLIED, DUPLICATE]
    assert (r.state.defaulted, r.state.late) == (0, 0)
    assert r.state.arms["a"].reward_sum == 1.0


def test_decision_folded_after_its_reward_or_default_is_not_pending() -> None:
    d1, d2 = decision(0, 100.0), decision(1, 100.0)
    r = fold_batch(state(), [reward_for(d1, 1.0, 110.0), default_for(d2), d1, d2])
    assert r.state.pending == {}
    assert r.state.pending_count == 0
    assert r.state.arms["a"].decisions == 1
    assert r.state.arms["b"].decisions == 1


def test_unlinked_reward_does_not_close_a_window() -> None:
    """An explicit 0.0 without decision id is one more observation; the decision still
    gets its default later (so a storefront doing both counts the miss twice)."""
    d = decision(0, 100.0)
    unlinked = RewardObserved(experiment_id=EXP, arm_id="a", reward=0.0, ts=105.0)
    r = fold_batch(state(), [d, unlinked, default_for(d)])
    assert r.outcomes == [APPLIED, APPLIED, APPLIED]
    assert r.state.arms["a"].pulls == 2
    assert r.state.defaulted == 1


def test_decisions_without_window_are_not_tracked() -> None:
    r = fold_batch(state(), [decision(0, 1.0, window=None)])
    assert r.state.pending == {}
    assert r.state.pending_count == 0
    assert b"attribution" not in r.state.snapshot_bytes()  # the v1 snapshot shape


def test_pending_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fold_module, "MAX_PENDING", 2)
    r = fold_batch(state(), [decision(0, float(t)) for t in range(5)])
    assert r.state.pending_count == 2
    assert r.state.untracked == 3


def test_snapshot_round_trip_keeps_the_counters() -> None:
    d = decision(0, 100.0)
    s = fold_batch(state(), [d, decision(1, 101.0), default_for(d), reward_for(d, 1.0, 300.0)])
    back = ExperimentState.from_snapshot(s.state.snapshot_bytes(), EXP)
    assert (back.pending_count, back.defaulted, back.late, back.untracked) == (1, 1, 1, 0)


def _log(n: int) -> tuple[list[AnyEvent], list[AnyEvent]]:
    """A decisions partition and a rewards partition of one experiment."""
    decisions = [decision(i % 2, 100.0 + i) for i in range(n)]
    rewards: list[AnyEvent] = []
    for i, d in enumerate(decisions):
        if i % 4 == 0:
            rewards.append(reward_for(d, 1.0, d.ts + 5))
        elif i % 4 == 1:
            rewards += [default_for(d), reward_for(d, 1.0, d.ts + 90)]  # late
        elif i % 4 == 2:
            rewards += [reward_for(d, 0.5, d.ts + 1), default_for(d)]  # default is a dup
    return list(decisions), rewards


def _summary(s: ExperimentState) -> tuple[object, ...]:
    return (
        {a: st.to_list() for a, st in s.arms.items()},
        s.pending,
        s.pending_count,
        s.defaulted,
        s.late,
        s.duplicates,
        s.version,
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=60, max_size=60), st.integers(1, 9))
def test_any_interleaving_and_batching_gives_the_same_state(picks: list[bool], batch: int) -> None:
    """Live reads two topics in any interleaving, in batches, with per-batch views of
    Redis; replay reads them all at once. All must agree."""
    decisions, rewards = _log(24)
    reference = fold_into(state(), [*decisions, *rewards]).state

    merged: list[AnyEvent] = []
    di = ri = 0
    for pick in picks:
        if pick and di < len(decisions):
            merged.append(decisions[di])
            di += 1
        elif ri < len(rewards):
            merged.append(rewards[ri])
            ri += 1
    merged += decisions[di:] + rewards[ri:]

    # The live consumer: Redis holds snapshot, seen and pending; each batch folds a
    # state built from the snapshot plus exactly the keys the batch looks up.
    snapshot: bytes | None = None
    seen: dict[str, float] = {}
    pending: dict[str, float] = {}
    for lo in range(0, len(merged), batch):
        events = merged[lo : lo + batch]
        keys = {k for e in events for k in lookup_keys(e)}
        ids = {
            e.decision_id
            for e in events
            if isinstance(e, RewardObserved | DecisionMade) and e.decision_id is not None
        }
        view = build_state(
            EXP,
            config(),
            snapshot,
            {k: seen[k] for k in keys if k in seen},
            {i: pending[i] for i in ids if i in pending},
        )
        result = fold_batch(view, events)
        seen.update(result.new_seen)
        pending.update(result.pending_added)
        for i in result.pending_removed:
            del pending[i]
        snapshot = result.state.snapshot_bytes()
    live = ExperimentState.from_snapshot(snapshot, EXP)
    live.pending = pending
    assert _summary(live) == _summary(reference)
    assert seen == reference.seen


def test_sweeper_watermark_clamps_and_falls_back_to_the_wall_clock() -> None:
    sweeper = AttributionSweeper(None, None, None, idle_grace_s=300.0)  # type: ignore[arg-type]
    assert sweeper.watermark(1000.0, now=2000.0) == 1700.0  # idle: wall clock - grace
    assert sweeper.watermark(1900.0, now=2000.0) == 1900.0  # event time
    assert sweeper.watermark(9e9, now=2000.0) == 2000.0  # a far-future record is clamped


def test_default_event_names_the_decisions_arm_and_is_deterministic() -> None:
    d = decision(1, 10.0)
    a = default_reward_event(config(default=0.25), d.decision_id, 70.0)
    b = default_reward_event(config(default=0.25), d.decision_id, 70.0)
    assert a is not None
    assert a == b
    assert (a.arm_id, a.reward, a.event_id) == ("b", 0.25, "ad-" + d.decision_id)
    assert default_reward_event(config(), "not-ours", 1.0) is None

"""The pure fold: sums, dedupe, state-dependent rejections, order/batching invariance."""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_core.decision_ids import make_decision_id
from bandit_core.fold import (
    APPLIED,
    DUPLICATE,
    STALE_CONFIG,
    fold,
    fold_batch,
    prune_seen,
)
from bandit_core.state import ExperimentState
from schemas.events import (
    AnyEvent,
    ArmsAdded,
    DecisionMade,
    ExperimentConfig,
    ExperimentCreated,
    RewardObserved,
    StrategyChanged,
)

pytestmark = pytest.mark.unit

EXP = "exp-1"
ARMS = ("blue", "green", "red")


def config(
    version: int = 1, arm_ids: tuple[str, ...] = ARMS, strategy: str = "thompson"
) -> ExperimentConfig:
    return ExperimentConfig(
        experiment_id=EXP,
        arm_ids=arm_ids,
        strategy=strategy,
        version=version,
        created_ts=1.0,
        updated_ts=float(version),
    )


def created(version: int = 1) -> ExperimentCreated:
    return ExperimentCreated(experiment_id=EXP, ts=1.0, config=config(version))


def reward(
    arm: str,
    value: float,
    *,
    decision_id: str | None = None,
    event_id: str | None = None,
    ts: float = 10.0,
) -> RewardObserved:
    event = RewardObserved(
        experiment_id=EXP, arm_id=arm, reward=value, decision_id=decision_id, ts=ts
    )
    return event if event_id is None else event.model_copy(update={"event_id": event_id})


def fresh() -> ExperimentState:
    return ExperimentState(experiment_id=EXP)


def test_created_then_rewards() -> None:
    result = fold_batch(
        fresh(),
        [
            created(),
            reward("blue", 1.0, ts=5.0),
            reward("blue", 0.5, ts=7.0),
            reward("green", 0.0),
        ],
    )
    assert result.outcomes == [APPLIED] * 4
    state = result.state
    assert state.config == config(1)
    assert state.version == 4
    blue = state.arms["blue"]
    assert blue.pulls == 2
    assert blue.reward_sum == pytest.approx(1.5)
    assert blue.reward_sq_sum == pytest.approx(1.25)
    assert blue.last_reward_ts == 7.0
    assert blue.mean == pytest.approx(0.75)
    assert state.arms["green"].pulls == 1
    assert "red" not in state.arms
    assert [s.pulls for s in state.stats_for(ARMS)] == [2, 1, 0]


def test_decisions_count_serves_not_pulls() -> None:
    decision = DecisionMade(
        experiment_id=EXP,
        decision_id=make_decision_id(1),
        arm_id="green",
        strategy="thompson",
        propensity=0.5,
        config_version=1,
        snapshot_version=1,
    )
    state = fold_batch(fresh(), [created(), decision, decision.model_copy()]).state
    assert state.arms["green"].decisions == 2
    assert state.arms["green"].pulls == 0


def test_duplicate_decision_id_is_a_noop() -> None:
    did = make_decision_id(0)
    base = fold(fresh(), created())
    result = fold_batch(
        base, [reward("blue", 1.0, decision_id=did), reward("blue", 0.0, decision_id=did)]
    )
    assert result.outcomes == [APPLIED, DUPLICATE]
    assert result.state.arms["blue"].pulls == 1
    assert result.state.arms["blue"].reward_sum == 1.0
    assert result.state.duplicates == 1
    assert result.state.version == base.version + 1
    assert len(result.new_seen) == 2
    assert "d:" + did in result.new_seen
    # across batches too, via the persisted seen keys
    again = fold_batch(result.state, [reward("blue", 1.0, decision_id=did)])
    assert again.outcomes == [DUPLICATE]
    assert again.state.arms["blue"].pulls == 1
    assert again.new_seen == {}


def test_same_event_id_twice_is_a_noop() -> None:
    base = fold(fresh(), created())
    event = reward("red", 1.0, event_id="evt-1")
    result = fold_batch(base, [event, event])
    assert result.outcomes == [APPLIED, DUPLICATE]
    assert result.state.arms["red"].pulls == 1
    assert result.new_seen == {"e:evt-1": 10.0}


def test_new_seen_holds_both_keys() -> None:
    did = make_decision_id(2)
    result = fold_batch(
        fold(fresh(), created()), [reward("red", 1.0, decision_id=did, event_id="e9")]
    )
    assert result.new_seen == {"d:" + did: 10.0, "e:e9": 10.0}


@pytest.mark.parametrize(
    ("event", "reason", "with_config"),
    [
        (RewardObserved(experiment_id=EXP, arm_id="blue", reward=1.0), "unknown_experiment", False),
        (RewardObserved(experiment_id=EXP, arm_id="purple", reward=1.0), "unknown_arm", True),
        (
            RewardObserved(
                experiment_id=EXP, arm_id="blue", reward=1.0, decision_id=make_decision_id(1)
            ),
            "arm_mismatch",
            True,
        ),
        (
            RewardObserved(
                experiment_id=EXP, arm_id="blue", reward=1.0, decision_id=make_decision_id(7)
            ),
            "arm_mismatch",
            True,
        ),
        (
            RewardObserved(experiment_id=EXP, arm_id="blue", reward=1.0, decision_id="not-ours"),
            "bad_decision_id",
            True,
        ),
        (  # a non-ASCII digit as the arm index (it used to raise instead)
            RewardObserved(
                experiment_id=EXP, arm_id="blue", reward=1.0, decision_id="a" * 32 + ".\u00b2"
            ),
            "bad_decision_id",
            True,
        ),
    ],
)
def test_rejections_leave_stats_untouched(
    event: RewardObserved, reason: str, with_config: bool
) -> None:
    base = fold(fresh(), created()) if with_config else fresh()
    result = fold_batch(base, [event])
    assert result.outcomes == [reason]
    assert result.state.arms == base.arms
    assert result.state.version == base.version
    assert result.state.seen == base.seen
    assert result.new_seen == {}
    assert result.state.duplicates == 0


def test_matching_decision_id_is_applied() -> None:
    result = fold_batch(
        fold(fresh(), created()), [reward("green", 1.0, decision_id=make_decision_id(1))]
    )
    assert result.outcomes == [APPLIED]


def test_stale_config_is_ignored() -> None:
    v2 = ArmsAdded(
        experiment_id=EXP,
        added_arm_ids=("pink",),
        config=config(2, (*ARMS, "pink")),
    )
    v3 = StrategyChanged(
        experiment_id=EXP,
        previous_strategy="thompson",
        config=config(3, (*ARMS, "pink"), strategy="ucb1"),
    )
    result = fold_batch(fresh(), [created(), v3, v2, created()])
    assert result.outcomes == [APPLIED, APPLIED, STALE_CONFIG, STALE_CONFIG]
    assert result.state.config is not None
    assert result.state.config.version == 3
    assert result.state.config.strategy == "ucb1"
    # order-insensitive: any order gives the highest version
    other = fold_batch(fresh(), [v2, v3, created()]).state
    assert other.config == result.state.config


def test_foreign_experiment_is_a_bug() -> None:
    with pytest.raises(ValueError):
        fold_batch(fresh(), [RewardObserved(experiment_id="other", arm_id="blue", reward=1.0)])


def test_prune_seen_forgets_old_keys() -> None:
    state = fold_batch(
        fold(fresh(), created()),
        [
            reward("blue", 1.0, event_id="old", ts=0.0),
            reward("blue", 1.0, event_id="new", ts=10 * 86400.0),
        ],
    ).state
    pruned = prune_seen(state, now_ts=10 * 86400.0)
    assert set(pruned.seen) == {"e:new"}
    assert set(state.seen) == {"e:old", "e:new"}


# --- properties ---------------------------------------------------------------------

_DECISION_IDS = [make_decision_id(i % 3) for i in range(4)] + [make_decision_id(5)]


@st.composite
def events(draw: st.DrawFn) -> AnyEvent:
    kind = draw(st.sampled_from(["reward", "reward", "reward", "config", "decision"]))
    ts = float(draw(st.integers(1, 1000)))
    if kind == "config":
        return ExperimentCreated(experiment_id=EXP, ts=ts, config=config(draw(st.integers(1, 3))))
    arm = draw(st.sampled_from([*ARMS, "ghost"]))
    if kind == "decision":
        return DecisionMade(
            experiment_id=EXP,
            ts=ts,
            decision_id=make_decision_id(0),
            arm_id=arm,
            strategy="ucb1",
            propensity=1.0,
            config_version=1,
            snapshot_version=0,
        )
    return RewardObserved(
        experiment_id=EXP,
        ts=ts,
        arm_id=arm,
        reward=draw(st.sampled_from([0.0, 0.25, 1.0])),
        event_id=draw(st.sampled_from(["a", "b", "c", "d", "e", "f"])),
        decision_id=draw(st.sampled_from([None, *_DECISION_IDS])),
    )


def _summary(state: ExperimentState) -> tuple[object, ...]:
    return (
        state.config,
        {k: v.to_list() for k, v in state.arms.items()},
        state.version,
        state.duplicates,
        state.seen,
    )


@settings(max_examples=80, deadline=None)
@given(evts=st.lists(events(), max_size=30), cuts=st.lists(st.integers(0, 30), max_size=5))
def test_any_batch_split_gives_the_same_state(evts: list[AnyEvent], cuts: list[int]) -> None:
    whole = fold_batch(fresh(), evts)
    state = fresh()
    outcomes: list[str] = []
    bounds = sorted({0, len(evts), *(min(c, len(evts)) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        part = fold_batch(state, evts[lo:hi])
        outcomes += part.outcomes
        state = part.state
    assert _summary(state) == _summary(whole.state)
    assert outcomes == whole.outcomes
    one_by_one = fresh()
    for e in evts:
        one_by_one = fold(one_by_one, e)
    assert _summary(one_by_one) == _summary(whole.state)


@settings(max_examples=50, deadline=None)
@given(evts=st.lists(events(), max_size=20), more=st.lists(events(), max_size=10))
def test_fold_batch_never_mutates_its_input(evts: list[AnyEvent], more: list[AnyEvent]) -> None:
    state = fold_batch(fresh(), evts).state
    before = copy.deepcopy(state)
    events_before = list(more)
    result = fold_batch(state, more)
    assert _summary(state) == _summary(before)
    assert more == events_before
    assert result.state is not state
    for arm_id, stats in result.state.arms.items():
        assert stats is not state.arms.get(arm_id)

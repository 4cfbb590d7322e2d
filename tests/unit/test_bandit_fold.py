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
    fold_into,
    lookup_keys,
    prune_seen,
)
from bandit_core.state import MAX_SRM_CELLS, ExperimentState
from schemas.events import (
    AnyEvent,
    ArmsAdded,
    DecisionMade,
    ExperimentConfig,
    ExperimentCreated,
    RewardObserved,
    StrategyChanged,
)
from tests.fixtures.events import decision_of

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
    decision = decision_of(EXP, "green", 1)
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
        unit = draw(st.sampled_from([None, "u1", "u2"]))
        return DecisionMade(
            experiment_id=EXP,
            ts=ts,
            decision_id=draw(st.sampled_from(_DECISION_IDS)) if unit else make_decision_id(0),
            arm_id=arm,
            strategy="ucb1",
            propensity=1.0,
            config_version=1,
            snapshot_version=0,
            unit_id=unit,
            assignment=None if unit is None else "consistent",
            allocation_version=None if unit is None else draw(st.integers(0, 2)),
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
        state.srm,
        state.srm_cells,
        state.srm_dropped,
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


# --- unit decisions (visitor assignment) ----------------------------------------------


def unit_decision(
    arm_index: int,
    *,
    decision_id: str | None = None,
    unit: str | None = None,
    version: int | None = 100,
    ts: float = 10.0,
) -> DecisionMade:
    """A consistent-mode decision; its unit is the decision id's own unless ``unit``."""
    decision_id = decision_id or make_decision_id(arm_index)
    return DecisionMade(
        experiment_id=EXP,
        ts=ts,
        decision_id=decision_id,
        arm_id=ARMS[arm_index],
        strategy="thompson",
        propensity=0.5,
        config_version=1,
        snapshot_version=0,
        unit_id=unit or decision_id[:32],
        assignment="consistent",
        allocation_version=version,
    )


def test_a_unit_decision_counts_once_per_decision_id() -> None:
    """The consistent mode logs each request of a unit under the id of its (unit,
    version): the first is a pull (decisions, units, SRM cell), repeats are duplicates."""
    first = unit_decision(1, decision_id="a" * 32 + ".1")
    again = first.model_copy(update={"event_id": "other", "ts": 11.0})
    result = fold_batch(fresh(), [created(), first, again, again])
    assert result.outcomes == [APPLIED, APPLIED, DUPLICATE, DUPLICATE]
    green = result.state.arms["green"]
    assert (green.decisions, green.units) == (1, 1)
    assert result.state.duplicates == 2
    assert result.state.srm == {100: {"green": 1}}
    assert result.new_seen == {"u:" + "a" * 32 + ".1": 10.0, "n:" + "a" * 32: 10.0}


def test_a_returning_unit_is_counted_once_under_its_first_version() -> None:
    """A consistent unit seen under three versions: three pulls (one per version), one
    unit, counted by the arm and version of its first decision (what keeps the SRM
    check's versions independent)."""
    evts: list[AnyEvent] = [
        unit_decision(i, version=v, decision_id=f"{v:032x}.{i}", unit="visitor-1")
        for v, i in ((7, 0), (8, 0), (9, 2))
    ]
    result = fold_batch(fresh(), evts)
    assert result.outcomes == [APPLIED] * 3
    state = result.state
    assert [s.decisions for s in state.stats_for(ARMS)] == [2, 0, 1]
    assert [s.units for s in state.stats_for(ARMS)] == [1, 0, 0]
    assert state.srm == {7: {"blue": 1}}
    assert result.new_seen["n:visitor-1"] == 10.0


def test_decisions_without_a_unit_are_counted_per_request_as_before() -> None:
    plain = decision_of(EXP, "blue", 0)
    result = fold_batch(fresh(), [plain, plain])
    assert result.outcomes == [APPLIED, APPLIED]
    assert (result.state.arms["blue"].decisions, result.state.arms["blue"].units) == (2, 0)
    assert result.new_seen == {}
    assert result.state.srm == {}
    assert lookup_keys(plain) == ()


def test_srm_counts_are_per_version_and_arm_and_skip_unversioned_units() -> None:
    evts: list[AnyEvent] = [
        unit_decision(0, version=7, decision_id="a" * 32 + ".0"),
        unit_decision(0, version=7, decision_id="b" * 32 + ".0"),
        unit_decision(2, version=7, decision_id="c" * 32 + ".2"),
        unit_decision(2, version=8, decision_id="d" * 32 + ".2"),
        unit_decision(1, version=None, decision_id="e" * 32 + ".1"),  # per_request + unit
    ]
    state = fold_batch(fresh(), evts).state
    assert state.srm == {7: {"blue": 2, "red": 1}, 8: {"red": 1}}
    assert state.srm_cells == 3
    assert [state.arms[a].units for a in ARMS] == [2, 1, 2]


def test_srm_cells_are_bounded_dropping_the_oldest_versions() -> None:
    versions = MAX_SRM_CELLS // len(ARMS) + 5
    evts = [
        unit_decision(i, version=v, decision_id=f"{v:032x}.{i}", unit=f"{v}-{i}")
        for v in range(versions)
        for i in range(len(ARMS))
    ]
    state = fold_batch(fresh(), evts).state
    assert state.srm_cells <= MAX_SRM_CELLS
    assert state.srm_cells == sum(len(arms) for arms in state.srm.values())
    kept = sorted(state.srm)
    assert kept == list(range(versions - len(kept), versions))  # the newest, contiguous
    assert state.srm_dropped == (versions - len(kept)) * len(ARMS)
    # Decisions logged late, under a version older than every kept one: that version is
    # the oldest, so it is the first to go once the cells are full again.
    assert state.srm_cells == MAX_SRM_CELLS - 1
    late_evts = [
        unit_decision(i, version=0, decision_id=f"{'f' * 32}.{i}", unit=f"late-{i}") for i in (0, 1)
    ]
    late = fold_batch(state, late_evts).state
    assert sorted(late.srm) == kept
    assert late.srm_dropped == state.srm_dropped + 2
    assert late.arms["blue"].units == state.arms["blue"].units + 1


def test_the_live_consumers_view_of_seen_folds_unit_decisions_like_replay() -> None:
    """The live consumer loads only ``lookup_keys`` of a batch from the stored ``seen``:
    folding batch by batch from that view gives replay's counts and outcomes."""
    ids = ["1" * 32 + ".0", "2" * 32 + ".1", "1" * 32 + ".0", "3" * 32 + ".2", "2" * 32 + ".1"]
    evts: list[AnyEvent] = [
        unit_decision(int(d[-1]), decision_id=d, ts=10.0 + i) for i, d in enumerate(ids)
    ]
    replay = fold_batch(fresh(), evts)
    stored_seen: dict[str, float] = {}
    live = fresh()
    outcomes: list[str] = []
    for batch in ([evts[0], evts[1]], [evts[2]], [evts[3], evts[4]]):
        wanted = {k for e in batch for k in lookup_keys(e)}
        live.seen = {k: t for k, t in stored_seen.items() if k in wanted}
        part = fold_into(live, batch)
        outcomes += part.outcomes
        stored_seen.update(part.new_seen)
    assert outcomes == replay.outcomes == [APPLIED, APPLIED, DUPLICATE, APPLIED, DUPLICATE]
    assert live.snapshot_bytes() == replay.state.snapshot_bytes()
    assert stored_seen == replay.state.seen


def test_lookup_keys_of_unit_decisions() -> None:
    d = unit_decision(0, decision_id="9" * 32 + ".0")
    did, unit = "9" * 32 + ".0", "9" * 32
    assert lookup_keys(d) == ("u:" + did, "n:" + unit)
    windowed = d.model_copy(update={"attribution_window_s": 60.0})
    assert lookup_keys(windowed) == ("u:" + did, "n:" + unit, "d:" + did, "x:" + did)


def continuous(version: int = 1, reward_cap: float | None = None) -> ExperimentCreated:
    """The experiment created as a continuous one (order values as rewards)."""
    fields = {**config(version).model_dump(), "reward_type": "continuous"}
    cfg = ExperimentConfig.model_validate({**fields, "reward_cap": reward_cap})
    return ExperimentCreated(experiment_id=EXP, ts=1.0, config=cfg)


def test_a_binary_experiment_rejects_an_amount_and_a_continuous_one_learns_it() -> None:
    """Scenario: an order value of 42.5 sent to a conversion (binary) experiment and to a
    continuous one. We expect the binary one to refuse it (its stats untouched) and the
    continuous one to add the amount as it is; 1.0 is fine for both."""
    binary = fold_batch(fresh(), [created(), reward("blue", 42.5), reward("blue", 1.0)])
    assert binary.outcomes == [APPLIED, "reward_out_of_range", APPLIED]
    assert binary.state.arms["blue"].pulls == 1
    amounts = fold_batch(fresh(), [continuous(), reward("blue", 42.5), reward("blue", 1.0)])
    assert amounts.outcomes == [APPLIED] * 3
    assert amounts.state.arms["blue"].reward_sum == pytest.approx(43.5)


def test_the_cap_winsorises_what_the_fold_learns_not_the_event() -> None:
    """Scenario: a continuous experiment with reward_cap 100 gets orders of 40, 100 and
    5000. We expect the arm to learn 40 + 100 + 100 (the outlier capped), with squares
    of the capped values, while the event still carries 5000."""
    big = reward("blue", 5000.0, ts=12.0)
    result = fold_batch(
        fresh(),
        [continuous(reward_cap=100.0), reward("blue", 40.0), reward("blue", 100.0), big],
    )
    assert result.outcomes == [APPLIED] * 4
    blue = result.state.arms["blue"]
    assert blue.pulls == 3
    assert blue.reward_sum == pytest.approx(240.0)
    assert blue.reward_sq_sum == pytest.approx(40.0**2 + 2 * 100.0**2)
    assert big.reward == 5000.0
    uncapped = fold_batch(fresh(), [continuous(), big]).state.arms["blue"]
    assert uncapped.reward_sum == pytest.approx(5000.0)

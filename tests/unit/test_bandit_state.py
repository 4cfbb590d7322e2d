"""The snapshot blob: unit counts and SRM cells round-trip, older snapshots keep their bytes."""

from __future__ import annotations

import orjson
import pytest

from bandit_core.fold import fold_batch
from bandit_core.state import ArmStats, ExperimentState
from schemas.events import DecisionMade
from tests.fixtures.events import decision_of

pytestmark = pytest.mark.unit

EXP = "Free Shipping"


def _unit_decision(arm: str, decision_id: str, version: int | None) -> DecisionMade:
    return DecisionMade(
        experiment_id=EXP,
        ts=100.0,
        decision_id=decision_id,
        arm_id=arm,
        strategy="thompson",
        propensity=0.5,
        config_version=1,
        snapshot_version=0,
        unit_id="visitor-" + decision_id[:4],
        assignment="sticky",
        allocation_version=version,
    )


def test_units_and_srm_cells_round_trip_through_the_snapshot() -> None:
    events = [
        decision_of(EXP, "10% off", 0, ts=99.0),  # a per_request decision, no unit
        _unit_decision("10% off", "a" * 32 + ".0", 29_000_000),
        _unit_decision("a:b", "b" * 32 + ".1", 29_000_000),
        _unit_decision("a:b", "c" * 32 + ".1", 29_000_001),
        _unit_decision("a:b", "d" * 32 + ".1", None),
    ]
    state = fold_batch(ExperimentState(experiment_id=EXP), events).state
    state.srm_dropped = 7
    raw = state.snapshot_bytes()
    back = ExperimentState.from_snapshot(raw, EXP)
    assert back.snapshot_bytes() == raw
    assert back.srm == {29_000_000: {"10% off": 1, "a:b": 1}, 29_000_001: {"a:b": 1}}
    assert (back.srm_cells, back.srm_dropped) == (3, 7)
    assert (back.arms["10% off"].units, back.arms["10% off"].decisions) == (1, 2)
    assert (back.arms["a:b"].units, back.arms["a:b"].decisions) == (3, 3)
    assert orjson.loads(raw)["srm"] == {
        "dropped": 7,
        "versions": {"29000000": {"10% off": 1, "a:b": 1}, "29000001": {"a:b": 1}},
    }


def test_a_state_without_units_keeps_the_earlier_snapshot_bytes() -> None:
    """No unit decision: 19 values per arm and no ``srm`` section, as before units."""
    state = fold_batch(
        ExperimentState(experiment_id=EXP), [decision_of(EXP, "10% off", 0, ts=5.0)]
    ).state
    obj = orjson.loads(state.snapshot_bytes())
    assert set(obj) == {"experiment_id", "version", "duplicates", "arms"}
    assert len(obj["arms"]["10% off"]) == 19
    assert ExperimentState.from_snapshot(state.snapshot_bytes(), EXP).arms["10% off"].units == 0


def test_a_snapshot_written_before_units_existed_loads_and_rewrites_identically() -> None:
    """A 19-value arm and no ``srm`` key: what every snapshot in Redis holds today."""
    arm = ArmStats(pulls=3, reward_sum=2.0, reward_sq_sum=2.0, decisions=5).to_list()
    raw = orjson.dumps({"experiment_id": EXP, "version": 8, "duplicates": 1, "arms": {"x": arm}})
    state = ExperimentState.from_snapshot(raw, EXP)
    assert (state.arms["x"].units, state.srm, state.srm_cells, state.srm_dropped) == (0, {}, 0, 0)
    assert state.snapshot_bytes() == raw


def test_arm_stats_reject_a_layout_of_unknown_length() -> None:
    values = ArmStats(units=2).to_list()
    assert len(values) == 20
    assert ArmStats.from_list(values).units == 2
    with pytest.raises(ValueError, match="20 or 21 values"):
        ArmStats.from_list([*values, [], 1])
    with pytest.raises(ValueError, match="value statistics"):
        ArmStats.from_list([*values, 1])


def test_copies_do_not_share_srm_cells() -> None:
    state = ExperimentState(experiment_id=EXP)
    state.count_unit(1, "x")
    copied = state.copy()
    copied.count_unit(1, "x")
    copied.count_unit(2, "y")
    assert state.srm == {1: {"x": 1}}
    assert copied.srm == {1: {"x": 2}, 2: {"y": 1}}
    assert (state.srm_cells, copied.srm_cells) == (1, 2)

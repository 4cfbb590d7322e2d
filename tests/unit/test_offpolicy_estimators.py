"""The pure parts of off-policy evaluation: join, event-time fold, estimators, export."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bandit_core.decision_ids import make_decision_id
from bandit_core.strategies import InvalidParamsError, UnknownStrategyError
from offpolicy.estimators import cross_fitted_arm_means, estimate
from offpolicy.evaluate import EvaluationOptions, evaluate_log
from offpolicy.export import ExportError, write_rows
from offpolicy.log import COLUMNS, ExperimentLog, join
from offpolicy.target import TargetPolicy, replay_target
from offpolicy.timeline import fold_timeline
from schemas.events import (
    ArmsAdded,
    DecisionMade,
    ExperimentConfig,
    RewardObserved,
)
from tests.fixtures.offpolicy_logs import config_event, simulate_log

pytestmark = pytest.mark.unit

EXP = "shop"
T = 1_800_000_000.0


def decision(arm: str, index: int, ts: float, p: float = 0.5, version: int = 1) -> DecisionMade:
    return DecisionMade(
        experiment_id=EXP,
        ts=ts,
        decision_id=make_decision_id(index),
        arm_id=arm,
        strategy="epsilon_greedy",
        strategy_params={"epsilon": 0.5},
        propensity=p,
        config_version=version,
        snapshot_version=0,
    )


def reward(d: DecisionMade | None, arm: str, value: float, ts: float) -> RewardObserved:
    return RewardObserved(
        experiment_id=EXP,
        ts=ts,
        arm_id=arm,
        reward=value,
        decision_id=None if d is None else d.decision_id,
    )


# --------------------------------------------------------------------------- join


def test_join_row_kinds_order_and_outcomes() -> None:
    d1 = decision("a", 0, T + 1)
    d2 = decision("b", 1, T + 2)
    d3 = decision("a", 0, T + 3)
    r1 = reward(d1, "a", 1.0, T + 1.5)
    r1_again = reward(d1, "a", 0.0, T + 4)
    r2_wrong_arm = reward(d2, "a", 1.0, T + 2.5)
    unlinked = reward(None, "b", 1.0, T + 2.2)
    orphan = RewardObserved(
        experiment_id=EXP, ts=T + 0.5, arm_id="a", reward=1.0, decision_id=make_decision_id(0)
    )
    log = ExperimentLog(
        experiment_id=EXP,
        config_events=(config_event(EXP, ["a", "b"], "epsilon_greedy", T),),
        decisions=(d1, d2, d3),
        rewards=(r1, r2_wrong_arm, unlinked, r1_again, orphan),
    )
    outcomes = fold_timeline(log).outcomes
    assert outcomes == ["applied", "arm_mismatch", "applied", "duplicate", "applied"]
    joined = join(log, outcomes)
    kinds = [(r.row_kind, r.decision_id, r.reward_event_id) for r in joined.rows]
    assert kinds == [
        ("reward_orphan", orphan.decision_id, orphan.event_id),
        ("joined", d1.decision_id, r1.event_id),
        ("joined", d1.decision_id, r1_again.event_id),
        ("joined", d2.decision_id, r2_wrong_arm.event_id),
        ("reward_unlinked", None, unlinked.event_id),
        ("decision", d3.decision_id, None),
    ]
    assert [r.reward_outcome for r in joined.rows] == [
        "applied",
        "applied",
        "duplicate",
        "arm_mismatch",
        "applied",
        None,
    ]
    assert joined.unlinked == 1
    assert joined.orphans == 1
    assert joined.rewards_of == [[0, 3], [1], []]
    row = joined.rows[1]
    assert (row.arm_id, row.propensity, row.strategy_params) == ("a", 0.5, '{"epsilon":0.5}')
    with pytest.raises(ValueError, match="outcomes"):
        join(log, outcomes[:-1])


def test_rewards_before_the_config_are_rejected_like_live() -> None:
    early = reward(None, "a", 1.0, T - 5)
    log = ExperimentLog(
        experiment_id=EXP,
        config_events=(config_event(EXP, ["a", "b"], "thompson", T),),
        rewards=(early, reward(None, "zzz", 1.0, T + 1)),
    )
    assert fold_timeline(log).outcomes == ["unknown_experiment", "unknown_arm"]


def test_a_reward_at_the_decisions_own_time_is_not_in_its_state() -> None:
    d1 = decision("a", 0, T + 1)
    d2 = decision("a", 0, T + 2)
    log = ExperimentLog(
        experiment_id=EXP,
        config_events=(config_event(EXP, ["a", "b"], "ucb1", T),),
        decisions=(d1, d2),
        rewards=(reward(d1, "a", 1.0, T + 2),),
    )
    replay = replay_target(log, TargetPolicy("ucb1"), [0, 1])
    # both decisions see "a" and "b" untried: uniform
    np.testing.assert_allclose(replay.probs, [[0.5, 0.5], [0.5, 0.5]])


# --------------------------------------------------------------------------- estimators


def test_estimators_by_hand() -> None:
    rewards = np.array([1.0, 0.0, 1.0, 1.0])
    arms = np.array([0, 1, 0, 1], dtype=np.int64)
    logging_p = np.array([0.5, 0.5, 0.25, 0.5])
    target = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    res = estimate(rewards, arms, logging_p, target, ("a", "b"), folds=2)
    w = np.array([2.0, 1.0, 4.0, 2.0])
    ips = float(np.mean(w * rewards))
    snips = float((w * rewards).sum() / w.sum())
    # cross-fitted q: fold 0 = samples 0, 2 (both arm a); fold 1 = samples 1, 3 (both arm b).
    # q for fold 0 comes from fold 1: arm b mean 0.5, arm a unseen -> pooled 0.5.
    # q for fold 1 comes from fold 0: arm a mean 1.0, arm b unseen -> pooled 1.0.
    q = np.array([[0.5, 0.5], [1.0, 1.0], [0.5, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(cross_fitted_arm_means(rewards, arms, 2, 2), q)
    dm = (target * q).sum(axis=1)
    dr_terms = dm + w * (rewards - q[np.arange(4), arms])
    got = {e.estimator: e for e in res.estimates}
    assert got["ips"].value == pytest.approx(ips)
    assert got["snips"].value == pytest.approx(snips)
    assert got["dr"].value == pytest.approx(float(dr_terms.mean()))
    se = float(np.std(w * rewards, ddof=1) / 2.0)
    assert got["ips"].std_error == pytest.approx(se)
    assert got["ips"].ci_low == pytest.approx(ips - 1.959964 * se, abs=1e-6)
    assert res.ess == pytest.approx(w.sum() ** 2 / (w * w).sum())
    assert res.logged.value == pytest.approx(0.75)
    assert [a.logged_decisions for a in res.arms] == [2, 2]
    assert [a.target_share for a in res.arms] == pytest.approx([0.625, 0.375])


def test_thin_support_warnings() -> None:
    rng = np.random.default_rng(1)
    n = 1000
    logging_policy = np.array([0.4995, 0.4995, 0.001 * 0.9])
    arms = rng.choice(2, size=n).astype(np.int64)
    arms[:3] = 2  # the rare arm was served a few times, at a tiny propensity
    p = logging_policy[arms]
    rewards = (rng.random(n) < 0.3).astype(np.float64)
    target = np.tile([0.0, 0.2, 0.8], (n, 1))
    res = estimate(rewards, arms, p, target, ("a", "b", "c"))
    text = " ".join(res.warnings)
    assert "effective sample size" in text
    assert "arm 'c'" in text
    assert "logging propensity below" in text
    # full support, similar policies: no warning
    fine = estimate(rewards, arms, p, np.tile([0.5, 0.5, 0.0], (n, 1)), ("a", "b", "c"))
    assert fine.warnings == []


def test_degenerate_inputs() -> None:
    empty = estimate(np.zeros(0), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 2)), ("a", "b"))
    assert empty.n == 0
    assert all(e.value is None for e in empty.estimates)
    assert empty.warnings == ["no decisions to evaluate"]
    one = estimate(np.ones(1), np.zeros(1, np.int64), np.ones(1), np.ones((1, 1)), ("a",))
    assert one.estimates[0].value == 1.0
    assert one.estimates[0].ci_low is None
    never = estimate(
        np.ones(3), np.zeros(3, np.int64), np.full(3, 0.5), np.tile([0.0, 1.0], (3, 1)), ("a", "b")
    )
    assert never.estimates[1].value is None
    assert any("SNIPS is undefined" in w for w in never.warnings)
    with pytest.raises(ValueError, match="shape"):
        estimate(np.ones(2), np.zeros(2, np.int64), np.ones(2), np.ones((3, 1)), ("a",))
    with pytest.raises(ValueError, match="propensities"):
        estimate(np.ones(1), np.zeros(1, np.int64), np.zeros(1), np.ones((1, 1)), ("a",))
    with pytest.raises(ValueError, match="confidence"):
        estimate(
            np.ones(1), np.zeros(1, np.int64), np.ones(1), np.ones((1, 1)), ("a",), confidence=1
        )
    assert math.isnan(empty.weight_max)
    assert empty.to_dict()["weight_max"] is None


# --------------------------------------------------------------------------- evaluate_log


def test_missing_rewards_drop_or_zero_and_truncation() -> None:
    sim = simulate_log(
        [0.3, 0.6],
        200,
        seed=2,
        logging="epsilon_greedy",
        logging_params={"epsilon": 0.5},
        target="epsilon_greedy",
        target_params={"epsilon": 0.2},
        exp=EXP,
    )
    kept = tuple(r for k, r in enumerate(sim.log.rewards) if k % 4)  # lose every 4th reward
    log = ExperimentLog(EXP, sim.log.config_events, sim.log.decisions, kept)
    drop = evaluate_log(log, "epsilon_greedy", {"epsilon": 0.2})
    zero = evaluate_log(
        log, "epsilon_greedy", {"epsilon": 0.2}, EvaluationOptions(missing_reward="zero")
    )
    assert drop.decisions_without_reward == zero.decisions_without_reward == 50
    assert drop.decisions_evaluated == 150
    assert zero.decisions_evaluated == 200
    assert zero.result.logged.value == pytest.approx(sum(r.reward for r in kept) / 200)
    assert any("have no applied reward" in w for w in drop.warnings)
    last = evaluate_log(log, "epsilon_greedy", {}, EvaluationOptions(max_decisions=40))
    assert last.truncated
    assert last.decisions_considered == 40
    assert any("most recent" in w for w in last.warnings)
    with pytest.raises(UnknownStrategyError):
        evaluate_log(log, "nope")
    with pytest.raises(InvalidParamsError):
        evaluate_log(log, "epsilon_greedy", {"epsilon": 3})
    with pytest.raises(ValueError, match="missing_reward"):
        EvaluationOptions(missing_reward="maybe")  # type: ignore[arg-type]


def test_arms_added_later_get_no_target_mass_before() -> None:
    v1 = config_event(EXP, ["a", "b"], "ucb1", T)
    cfg2 = ExperimentConfig(
        experiment_id=EXP,
        arm_ids=("a", "b", "c"),
        strategy="ucb1",
        version=2,
        created_ts=T,
        updated_ts=T + 10,
    )
    v2 = ArmsAdded(experiment_id=EXP, ts=T + 10, added_arm_ids=("c",), config=cfg2)
    d1 = decision("a", 0, T + 1)
    d2 = decision("c", 2, T + 11, p=1 / 3, version=2)
    d3 = decision("c", 2, T + 12, p=0.5, version=1)  # names an arm its config lacks
    log = ExperimentLog(EXP, (v1, v2), (d1, d2, d3), ())
    replay = replay_target(log, TargetPolicy("ucb1"), [0, 1, 2])
    assert replay.arm_ids == ("a", "b", "c")
    assert replay.evaluated == [0, 1]
    assert replay.skipped == {2: "arm_not_in_config"}
    np.testing.assert_allclose(replay.probs, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])


# --------------------------------------------------------------------------- export


def test_export_round_trip_csv_and_parquet(tmp_path: Path) -> None:
    d1 = decision("a", 0, T + 1, p=0.1 + 0.2)
    log = ExperimentLog(
        experiment_id=EXP,
        config_events=(config_event(EXP, ["a", "b"], "epsilon_greedy", T),),
        decisions=(d1, decision("b", 1, T + 2)),
        rewards=(reward(d1, "a", 1.0, T + 1.25), reward(None, "b", 0.5, T + 3)),
    )
    rows = join(log, fold_timeline(log).outcomes).rows
    seen: list[int] = []
    assert write_rows(tmp_path / "a.csv", rows, seen.append) == "csv"
    assert write_rows(tmp_path / "a.parquet", rows) == "parquet"
    assert sum(seen) == len(rows) == 3
    with (tmp_path / "a.csv").open(newline="") as fh:
        lines = list(csv.reader(fh))
    assert tuple(lines[0]) == COLUMNS
    assert lines[1][COLUMNS.index("propensity")] == repr(0.1 + 0.2)
    assert lines[3][COLUMNS.index("decision_id")] == ""  # the unlinked reward
    table = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert [tuple(r[c] for c in COLUMNS) for r in table] == [r.as_tuple() for r in rows]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.parquet"]
    empty = tmp_path / "empty.parquet"
    write_rows(empty, [])
    assert pq.read_table(empty).num_rows == 0
    with pytest.raises(ExportError, match="unknown extension"):
        write_rows(tmp_path / "a.json", rows)
    with pytest.raises(ExportError, match="no such directory"):
        write_rows(tmp_path / "missing" / "a.csv", rows)

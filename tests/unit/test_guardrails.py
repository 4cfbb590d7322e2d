"""Metrics on rewards and guardrails: validation, the fold's sequences and breaches, the
event, the pause in decisions and the snapshot (docs/guardrails.md)."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from bandit_core.fold import DERIVED, fold_batch, rejection_text, reward_rejection
from bandit_core.guardrails import GuardrailState, breached
from bandit_core.state import ExperimentState
from mab_client.models import ConfigUpdate, ExperimentCreate, GuardrailSpec, RewardCreate
from schemas.codec import decode, encode
from schemas.events import (
    AnyEvent,
    ExperimentConfig,
    ExperimentCreated,
    GuardrailBreached,
    RewardObserved,
)
from schemas.rejections import Rejection
from services.reward_consumer.processor import guardrail_event
from tests.fixtures.decisions import offline_cache

pytestmark = pytest.mark.unit

EXP = "shop"
ARMS = ("control", "treat", "other")
METRICS = [{"name": "refund", "min": 0, "max": 1}, {"name": "latency_ms", "min": 0, "max": 5000}]
REFUND_GUARD = {
    "metric": "refund",
    "direction": "increase_is_bad",
    "max_absolute_change": 0.02,
    "min_samples": 50,
    "action": "pause",
}


def config(**over: Any) -> ExperimentConfig:
    fields: dict[str, Any] = {
        "experiment_id": EXP,
        "arm_ids": ARMS,
        "strategy": "thompson",
        "version": 1,
        "created_ts": 1.0,
        "updated_ts": 1.0,
        "metrics": METRICS,
        "guardrails": [REFUND_GUARD],
        "control_arm_id": "control",
        **over,
    }
    return ExperimentConfig.model_validate(fields)


def created(cfg: ExperimentConfig) -> ExperimentCreated:
    return ExperimentCreated(experiment_id=EXP, ts=1.0, config=cfg)


def rewards(rates: dict[str, float], n: int, seed: int = 1, start: int = 0) -> list[RewardObserved]:
    """``n`` rewards per arm, round robin, each with a Bernoulli(rate) refund."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        for arm, rate in rates.items():
            refund = 1.0 if rng.random() < rate else 0.0
            out.append(
                RewardObserved(
                    event_id=f"r-{arm}-{i}",
                    ts=10.0 + i,
                    experiment_id=EXP,
                    arm_id=arm,
                    reward=1.0 - refund,
                    metrics={"refund": refund},
                )
            )
    return out


# --------------------------------------------------------------------------- validation


def _create(**over: Any) -> ExperimentCreate:
    return ExperimentCreate.model_validate(
        {
            "experiment_id": EXP,
            "arm_ids": list(ARMS),
            "metrics": METRICS,
            "guardrails": [REFUND_GUARD],
            "control_arm_id": "control",
            **over,
        }
    )


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"guardrails": [{**REFUND_GUARD, "metric": "returns"}]}, "'returns': the metric is not"),
        ({"control_arm_id": "nope"}, "control_arm_id 'nope' is not an arm"),
        ({"control_arm_id": None}, "guardrails need control_arm_id"),
        ({"metrics": [{"name": "refund", "min": 1, "max": 1}]}, "min (1) must be below max"),
        ({"metrics": [{"name": "refund", "min": 0, "max": float("inf")}]}, "finite"),
        ({"metrics": [*METRICS, METRICS[0]]}, "duplicate names ['refund']"),
        ({"metrics": [{"name": f"m{i}", "min": 0, "max": 1} for i in range(21)]}, "at most 20"),
        ({"guardrail_alpha": 0}, "greater than 0"),
        ({"guardrail_alpha": 1}, "less than 1"),
        (
            {"guardrails": [{**REFUND_GUARD, "max_relative_change": 0.1}]},
            "exactly one of max_relative_change",
        ),
        (
            {
                "metrics": [{"name": "refund", "min": -1, "max": 1}],
                "guardrails": [
                    {**REFUND_GUARD, "max_absolute_change": None, "max_relative_change": 0.1}
                ],
            },
            "max_relative_change needs a metric with min >= 0",
        ),
        ({"guardrails": [{**REFUND_GUARD, "direction": "up"}]}, "increase_is_bad"),
        ({"guardrails": [{**REFUND_GUARD, "action": "stop"}]}, "'pause' or 'alert'"),
    ],
)
def test_bad_settings_are_refused_naming_the_rule(over: dict[str, Any], message: str) -> None:
    """Scenario: a create request (and the config built from it) with one bad guardrail
    setting. We expect: a validation error naming the setting, from both models."""
    with pytest.raises(ValidationError, match=re.escape(message)):
        _create(**over)
    with pytest.raises(ValidationError):
        config(**over)


def test_settings_are_fixed_at_creation_and_old_configs_load_without_them() -> None:
    for name in ("metrics", "guardrails", "control_arm_id", "guardrail_alpha"):
        with pytest.raises(ValidationError, match=f"{name} cannot change after creation"):
            ConfigUpdate.model_validate({"experiment_id": EXP, "strategy": "ucb1", name: None})
    old = ExperimentConfig.model_validate_json(
        b'{"experiment_id":"shop","arm_ids":["a"],"strategy":"thompson","version":1,'
        b'"created_ts":1.0,"updated_ts":1.0}'
    )
    assert (old.metrics, old.guardrails, old.control_arm_id) == ((), (), None)
    assert old.guardrail_alpha == 0.05
    assert _create().guardrails[0].max_absolute_change == 0.02


def test_reward_metrics_are_checked_by_the_request_and_by_the_fold() -> None:
    """Scenario: rewards whose metrics are non-finite, undeclared or out of range. We
    expect: the request refuses what no experiment accepts; the fold's rule (REST and
    Kafka alike) refuses an undeclared name or an out-of-range value, naming it."""
    base = {"experiment_id": EXP, "arm_id": "treat", "reward": 1.0}
    with pytest.raises(ValidationError, match="finite"):
        RewardCreate.model_validate({**base, "metrics": {"refund": float("nan")}})
    cfg = config()
    for metrics, text in [
        ({"returns": 1.0}, "metric 'returns' is not declared"),
        ({"refund": 2.0}, "metric 'refund': value 2.0 is outside its range [0, 1]"),
        ({"latency_ms": -1.0}, "outside its range [0, 5000]"),
    ]:
        event = RewardObserved.model_validate({**base, "metrics": metrics})
        assert reward_rejection(cfg, event) is Rejection.BAD_METRIC
        assert text in rejection_text(Rejection.BAD_METRIC, event, cfg)
    ok = RewardObserved.model_validate({**base, "metrics": {"refund": 1.0, "latency_ms": 180.0}})
    assert reward_rejection(cfg, ok) is None
    assert reward_rejection(config(metrics=[], guardrails=[]), ok) is Rejection.BAD_METRIC


# --------------------------------------------------------------------------- breach logic


@pytest.mark.parametrize(
    ("guard", "arm", "control", "expected"),
    [
        (
            {"direction": "increase_is_bad", "max_absolute_change": 0.1},
            (0.5, 0.6),
            (0.2, 0.39),
            True,
        ),
        (
            {"direction": "increase_is_bad", "max_absolute_change": 0.1},
            (0.5, 0.6),
            (0.2, 0.41),
            False,
        ),
        (
            {"direction": "increase_is_bad", "max_relative_change": 0.2},
            (0.5, 0.6),
            (0.2, 0.41),
            True,
        ),
        (
            {"direction": "increase_is_bad", "max_relative_change": 0.2},
            (0.49, 0.6),
            (0.2, 0.41),
            False,
        ),
        (
            {"direction": "decrease_is_bad", "max_absolute_change": 0.1},
            (0.1, 0.29),
            (0.4, 0.5),
            True,
        ),
        (
            {"direction": "decrease_is_bad", "max_absolute_change": 0.1},
            (0.1, 0.31),
            (0.4, 0.5),
            False,
        ),
        (
            {"direction": "decrease_is_bad", "max_relative_change": 0.5},
            (0.1, 0.19),
            (0.4, 0.5),
            True,
        ),
        (
            {"direction": "decrease_is_bad", "max_relative_change": 0.5},
            (0.1, 0.21),
            (0.4, 0.5),
            False,
        ),
    ],
)
def test_breach_needs_the_bad_direction_proven_beyond_the_limit(
    guard: dict[str, Any], arm: tuple[float, float], control: tuple[float, float], expected: bool
) -> None:
    spec = GuardrailSpec.model_validate({"metric": "refund", **guard})
    assert breached(spec, arm, control) is expected


# --------------------------------------------------------------------------- the fold


def test_a_clearly_worse_arm_is_breached_once_and_paused() -> None:
    """Scenario: control and "other" refund 2 %, "treat" 30 %, 400 rewards each. We
    expect: one breach (treat, guardrail 0) once both have 50 values, never repeated;
    treat paused, other not; the breach is in the snapshot and survives a round trip."""
    cfg = config()
    result = fold_batch(
        ExperimentState(EXP),
        [created(cfg), *rewards({"control": 0.02, "treat": 0.3, "other": 0.02}, 400)],
    )
    assert [(b.arm_id, b.guardrail) for b in result.breaches] == [("treat", 0)]
    breach = result.breaches[0]
    assert breach.arm_samples >= 50
    assert breach.control_samples >= 50
    assert breach.arm_interval[0] - breach.control_interval[1] > 0.02
    state = result.state
    assert state.guard.paused == frozenset({"treat"})
    assert state.guard.status(cfg, 0, "other") == "ok"
    assert state.guard.status(cfg, 0, "control") == "control"
    more = fold_batch(state, rewards({"control": 0.02, "treat": 0.3}, 100, seed=2, start=400))
    assert more.breaches == []
    loaded = ExperimentState.from_snapshot(state.snapshot_bytes(), EXP)
    assert loaded.guard.paused == frozenset({"treat"})
    assert loaded.guard.interval("treat", "refund") == state.guard.interval("treat", "refund")
    assert loaded.snapshot_bytes() == state.snapshot_bytes()


def test_waiting_below_min_samples_and_alert_does_not_pause() -> None:
    cfg = config(guardrails=[{**REFUND_GUARD, "action": "alert", "min_samples": 1000}])
    state = fold_batch(
        ExperimentState(EXP), [created(cfg), *rewards({"control": 0.0, "treat": 1.0}, 200)]
    ).state
    assert state.guard.status(cfg, 0, "treat") == "waiting"
    cfg = config(guardrails=[{**REFUND_GUARD, "action": "alert"}])
    result = fold_batch(
        ExperimentState(EXP), [created(cfg), *rewards({"control": 0.0, "treat": 1.0}, 200)]
    )
    assert [b.arm_id for b in result.breaches] == ["treat"]
    assert result.state.guard.paused == frozenset()
    assert result.state.guard.status(cfg, 0, "treat") == "breached"


def test_a_control_value_can_complete_a_breach() -> None:
    """The control's interval moves too: a breach proven by a control reward is found."""
    cfg = config()
    events: list[AnyEvent] = [
        created(cfg),
        *rewards({"treat": 0.5}, 300),
        *rewards({"control": 0.0}, 300),
    ]
    result = fold_batch(ExperimentState(EXP), events)
    assert [b.arm_id for b in result.breaches] == ["treat"]


def test_replay_in_other_chunks_rebuilds_the_same_breach_and_state() -> None:
    cfg = config()
    events: list[AnyEvent] = [
        created(cfg),
        *rewards({"control": 0.02, "treat": 0.3, "other": 0.05}, 300),
    ]
    whole = fold_batch(ExperimentState(EXP), events)
    state = ExperimentState(EXP)
    found = []
    for i in range(0, len(events), 97):
        chunk = fold_batch(state, events[i : i + 97])
        state = chunk.state
        found += chunk.breaches
    assert found == whole.breaches
    assert state.snapshot_bytes() == whole.state.snapshot_bytes()


def test_old_snapshots_load_and_metric_free_experiments_keep_their_bytes() -> None:
    plain = fold_batch(
        ExperimentState(EXP),
        [created(config(metrics=[], guardrails=[], control_arm_id=None))],
    ).state
    assert b"guardrails" not in plain.snapshot_bytes()
    old = ExperimentState.from_snapshot(b'{"experiment_id":"shop","version":3,"arms":{}}', EXP)
    assert old.guard.paused == frozenset()
    assert not old.guard


# --------------------------------------------------------------------------- the event


def test_breach_event_is_deterministic_round_trips_and_folds_as_derived() -> None:
    cfg = config()
    result = fold_batch(
        ExperimentState(EXP), [created(cfg), *rewards({"control": 0.0, "treat": 0.5}, 200)]
    )
    event = guardrail_event(cfg, result.breaches[0])
    assert event.event_id == "gb-shop-treat-0"
    assert (event.metric, event.action, event.control_arm_id) == ("refund", "pause", "control")
    again = guardrail_event(cfg, result.breaches[0])
    assert again == event
    decoded = decode(encode(event))
    assert isinstance(decoded, GuardrailBreached)
    assert decoded == event
    assert fold_batch(result.state, [event]).outcomes == [DERIVED]


# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_a_paused_arm_gets_no_traffic_beyond_the_floor(floor: float) -> None:
    """Scenario: treat is paused, although its conversion is the best. We expect: its
    strategy propensity is 0; without a floor it is never served, with a floor it is
    served about ``floor`` of the time and logs exactly that."""
    cfg = config(min_arm_share=floor, strategy_params={"seed": 3})
    state = fold_batch(
        ExperimentState(EXP), [created(cfg), *rewards({"control": 0.02, "treat": 0.4}, 300)]
    ).state
    assert state.guard.paused == frozenset({"treat"})
    state.arms["treat"].reward_sum = state.arms["treat"].pulls  # the best converter
    cache = offline_cache(5000)
    entry = cache._build(EXP, cfg.model_dump_json().encode(), state.snapshot_bytes(), None)
    treat = ARMS.index("treat")
    assert entry.propensities[treat] == 0.0
    assert sum(entry.propensities) == pytest.approx(1.0)
    assert entry.logged[treat] == pytest.approx(max(floor, 1e-6))
    counts = Counter(ARMS[cache.decide(entry, 100.0)[0]] for _ in range(4000))
    if floor == 0.0:
        assert counts["treat"] == 0
    else:
        assert 0.02 < counts["treat"] / 4000 < 0.08
    assert counts["control"] + counts["other"] > 0
    props = cache.propensities(cfg, state.stats_for(ARMS), 100.0, state.guard.paused)
    assert props[treat] == pytest.approx(floor)


def test_guardrail_state_copy_is_deep() -> None:
    state = GuardrailState.empty()
    state.observe(config(), "treat", {"refund": 1.0}, 1.0)
    copy = state.copy()
    copy.observe(config(), "treat", {"refund": 1.0}, 2.0)
    assert state.sequences["treat"]["refund"].n == 1
    assert copy.sequences["treat"]["refund"].n == 2

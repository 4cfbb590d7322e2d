"""The holdout: its settings' validation, its propensities, its hash split and its marked
decision ids."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bandit_core.decision_ids import (
    arm_index_of,
    holdout_decision_id,
    is_holdout_id,
    make_decision_id,
)
from bandit_core.holdout import holdout_uniform, unit_held_out, with_holdout, without_holdout
from bandit_core.state import ArmStats, ExperimentState
from mab_client.assignment import Allocation, assignment_digest
from mab_client.models import ConfigUpdate, ExperimentCreate
from schemas.events import ExperimentConfig
from services.decider.decisions import DecisionCache
from services.decider.units import bandit_rule, choose_unit
from tests.fixtures.events import config_of

pytestmark = pytest.mark.unit

ARMS = ("control", "b", "c")


def _config(**settings: Any) -> ExperimentConfig:
    return config_of(
        "shop",
        ARMS,
        strategy="epsilon_greedy",
        ts=1.0,
        strategy_params={"epsilon": 0.3, "seed": 5},
        **settings,
    )


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"holdout_share": 0.2}, "needs a control_arm_id"),
        ({"holdout_share": 0.2, "control_arm_id": "nope"}, "is not an arm"),
        ({"control_arm_id": "nope"}, "is not an arm"),
        ({"holdout_share": 0.6, "control_arm_id": "b"}, "less than or equal to 0.5"),
        ({"holdout_share": -0.1, "control_arm_id": "b"}, "greater than or equal to 0"),
        ({"holdout_share": math.nan, "control_arm_id": "b"}, "finite number"),
        ({"stop_probability": 0.4}, "greater than or equal to 0.5"),
        ({"stop_probability": 1.5}, "less than or equal to 1"),
        ({"stop_expected_loss": -1.0}, "greater than or equal to 0"),
    ],
)
def test_bad_settings_are_refused_by_the_request_and_the_config(
    settings: dict[str, Any], message: str
) -> None:
    body = {"experiment_id": "shop", "arm_ids": list(ARMS), **settings}
    with pytest.raises(ValidationError, match=message):
        ExperimentCreate.model_validate(body)
    with pytest.raises(ValidationError, match=message):
        _config(**settings)


def test_good_settings_and_defaults() -> None:
    body = ExperimentCreate.model_validate(
        {
            "experiment_id": "shop",
            "arm_ids": list(ARMS),
            "holdout_share": 0.5,
            "control_arm_id": " b ",
        }
    )
    assert (body.holdout_share, body.control_arm_id) == (0.5, "b")
    config = _config(holdout_share=0.2, control_arm_id="c")
    assert config.control_index == 2
    old = ExperimentConfig.model_validate_json(
        _config().model_dump_json(
            exclude={"control_arm_id", "holdout_share", "stop_probability", "stop_expected_loss"}
        )
    )
    assert (old.holdout_share, old.control_arm_id, old.stop_probability) == (0.0, None, 0.95)
    assert old.stop_expected_loss is None


@pytest.mark.parametrize(
    "name",
    [
        "holdout_share",
        "control_arm_id",
        "stop_probability",
        "stop_expected_loss",
        "route_to_winner",
    ],
)
def test_the_settings_are_fixed_at_creation(name: str) -> None:
    with pytest.raises(ValidationError, match=f"{name} cannot change after creation"):
        ConfigUpdate.model_validate({"experiment_id": "shop", "strategy": "thompson", name: 0.1})


# --------------------------------------------------------------------------- propensities


@given(
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6).filter(lambda ps: sum(ps) > 0.01),
    st.floats(0.0, 0.5),
    st.data(),
)
def test_with_holdout_is_the_mixture_and_without_holdout_inverts_it(
    raw: list[float], share: float, data: st.DataObject
) -> None:
    total = sum(raw)
    ps = [p / total for p in raw]
    control = data.draw(st.integers(0, len(ps) - 1))
    mixed = with_holdout(ps, share, control)
    assert sum(mixed) == pytest.approx(1.0)
    for i, (p, m) in enumerate(zip(ps, mixed, strict=True)):
        want = share + (1 - share) * p if i == control else (1 - share) * p
        assert m == pytest.approx(want)
    assert without_holdout(mixed, share, control) == pytest.approx(ps, abs=1e-9)


def _cache() -> DecisionCache:
    return DecisionCache(
        object(),  # type: ignore[arg-type]  # never reached: the entry is built directly
        max_staleness_s=60.0,
        max_entries=10,
        propensity_samples=1000,
        degraded_max_age_s=60.0,
    )


def test_a_declared_winner_takes_the_traffic_when_routed() -> None:
    """Scenario: "c" declared the winner, holdout 0.2 on "control". We expect, with
    route_to_winner, every bandit decision on "c" (logged 0.8) and the holdout's 20% on
    the control (logged 0.2), "b" never served; without it, the policy as before."""
    state = ExperimentState.from_snapshot(None, "shop")
    for arm in ARMS:
        state.arms[arm] = ArmStats(pulls=100, reward_sum=10.0, decisions=100)
    state.winner = "c"
    cache = _cache()
    settings = {"holdout_share": 0.2, "control_arm_id": "control"}
    routed = _config(route_to_winner=True, **settings)
    entry = cache._build("shop", routed.model_dump_json().encode(), state.snapshot_bytes(), None)
    assert entry.routed == 2
    served: Counter[str] = Counter()
    for _ in range(2000):
        if cache.held_out(entry):
            served["holdout"] += 1
            continue
        index, propensity = cache.decide(entry, 0.0)
        served[ARMS[index]] += 1
        assert propensity == pytest.approx(0.8)
    assert set(served) == {"holdout", "c"}
    assert entry.logged[0] == pytest.approx(0.2)
    assert cache.routed_propensities(routed, state) == pytest.approx([0.2, 0.0, 0.8])
    informational = _config(**settings)
    plain = cache._build(
        "shop", informational.model_dump_json().encode(), state.snapshot_bytes(), None
    )
    assert plain.routed is None
    assert cache.routed_propensities(informational, state) is None


def test_per_request_holdout_shares_and_logged_propensities() -> None:
    """Scenario: 3 arms, epsilon-greedy leading on "c", holdout 0.2 on "control", 30,000
    requests. We expect: 20% of them held out (within 4.5 standard errors), all on the
    control; every decision of an arm logs ``h + (1 - h) p_c`` for the control and
    ``(1 - h) p_i`` for the others; the empirical shares match those."""
    stats = [ArmStats(pulls=100, reward_sum=s, decisions=100) for s in (10.0, 20.0, 40.0)]
    state = ExperimentState.from_snapshot(None, "shop")
    state.arms.update(zip(ARMS, stats, strict=True))
    cache = _cache()
    h = 0.2
    config = _config(holdout_share=h, control_arm_id="control")
    entry = cache._build("shop", config.model_dump_json().encode(), state.snapshot_bytes(), None)
    raw = entry.propensities
    expected = [h + (1 - h) * raw[0], (1 - h) * raw[1], (1 - h) * raw[2]]
    n = 30_000
    served: Counter[int] = Counter()
    held = 0
    logged: defaultdict[int, set[float]] = defaultdict(set)
    for _ in range(n):
        if cache.held_out(entry):
            held += 1
            index, propensity = entry.control, entry.logged[entry.control]
        else:
            index, propensity = cache.decide(entry, 0.0)
        served[index] += 1
        logged[index].add(propensity)
    assert abs(held / n - h) < 4.5 * math.sqrt(h * (1 - h) / n)
    for i, want in enumerate(expected):
        assert len(logged[i]) == 1
        assert logged[i].pop() == pytest.approx(want)
        assert abs(served[i] / n - want) < 4.5 * math.sqrt(want * (1 - want) / n)
    assert cache.propensities(config, stats, 0.0) == pytest.approx(expected, abs=0.02)


# --------------------------------------------------------------------------- the unit hash


def test_the_unit_split_has_its_share_and_is_independent_of_the_assignment() -> None:
    """20% of 20,000 units held out (4.5 standard errors), the same answer every time,
    and the held-out units' assignment digests are as uniform as anyone's (the first
    byte's halves split evenly): the two hashes are independent."""
    n, h = 20_000, 0.2
    units = [f"visitor-{i}" for i in range(n)]
    held = [u for u in units if unit_held_out(u, "salt", h)]
    assert abs(len(held) / n - h) < 4.5 * math.sqrt(h * (1 - h) / n)
    assert all(unit_held_out(u, "salt", h) for u in held[:100])
    high = sum(assignment_digest(u, "salt")[0] >= 128 for u in held)
    assert abs(high / len(held) - 0.5) < 4.5 * math.sqrt(0.25 / len(held))
    assert not unit_held_out("visitor-1", "salt", 0.0)
    assert 0.0 <= holdout_uniform("visitor-1", "salt") < 1.0
    assert holdout_uniform("visitor-1", "salt") != holdout_uniform("visitor-1", "other")


def test_unit_decisions_under_an_allocation_with_a_holdout() -> None:
    """The stored weights include the holdout; a held-out unit gets the control under a
    marked id, the others the rule's draw from the weights without it; each logs its
    arm's stored weight, and the arms' shares are those weights."""
    h = 0.2
    config = _config(holdout_share=h, control_arm_id="control")
    bandit = [0.1, 0.3, 0.6]
    rule = Allocation("shop", 7, ARMS, tuple(with_holdout(bandit, h, 0)), config.salt)
    without = bandit_rule(config, rule)
    assert without is not None
    assert without.weights == pytest.approx(bandit)
    n = 20_000
    served: Counter[int] = Counter()
    for i in range(n):
        local, token = choose_unit(config, rule, without, f" visitor-{i} ")
        assert token == rule.unit_token(f"visitor-{i}")
        assert local.propensity == rule.weights[local.arm_index]
        held = unit_held_out(f"visitor-{i}", config.salt, h)
        assert is_holdout_id(local.decision_id) is held
        assert arm_index_of(local.decision_id) == local.arm_index
        if held:
            assert local.arm_index == 0
        served[local.arm_index] += 1
    for i, want in enumerate(rule.weights):
        assert abs(served[i] / n - want) < 4.5 * math.sqrt(want * (1 - want) / n)
    assert bandit_rule(_config(), rule) is None


def test_holdout_decision_ids_name_their_arm_and_their_mark() -> None:
    plain = make_decision_id(3)
    marked = holdout_decision_id(plain)
    assert arm_index_of(marked) == 3
    assert is_holdout_id(marked)
    assert not is_holdout_id(plain)
    assert arm_index_of(plain + "hh") is None

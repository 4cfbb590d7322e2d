"""Request validation of the decider: whatever passes becomes an immutable event."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.ids import MAX_ARMS
from services.decider.app import create_app
from services.decider.models import ArmsAdd, ConfigUpdate, ExperimentCreate, RewardCreate
from services.decider.settings import DeciderSettings

pytestmark = pytest.mark.unit

BAD_IDS = ["", "a:b", "a*", "ä-unicode", "x" * 10_000, "-leading-dash", "a b", "{tag}", "a/b"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_experiment_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        ExperimentCreate(experiment_id=bad, arm_ids=["a", "b"])


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_arm_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        ExperimentCreate(experiment_id="exp", arm_ids=["a", bad])
    with pytest.raises(ValidationError):
        ArmsAdd(arm_ids=[bad])


def test_valid_create_keeps_seed_shape() -> None:
    body = ExperimentCreate(
        experiment_id="cta-button-test",
        arm_ids=["blue-button", "green-button", "red-button"],
        strategy="thompson",
        strategy_params={"seed": 42},
    )
    assert body.strategy == "thompson"
    assert body.strategy_params == {"seed": 42}


def test_strategy_defaults_to_none_so_the_server_default_applies() -> None:
    body = ExperimentCreate(experiment_id="e", arm_ids=["a", "b"])
    assert body.strategy is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [("THOMPSON", "thompson"), ("UCB1", "ucb1"), ("EPSILON_GREEDY", "epsilon_greedy")],
)
def test_seed_strategy_spellings_are_normalised(given: str, expected: str) -> None:
    assert ExperimentCreate(experiment_id="e", arm_ids=["a", "b"], strategy=given).strategy == (
        expected
    )
    assert DeciderSettings(active_strategy=given, auth="open").active_strategy == expected


def test_unknown_strategy_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ValidationError, match="thompson"):
        ExperimentCreate(experiment_id="e", arm_ids=["a", "b"], strategy="softmax")
    with pytest.raises(ValidationError, match="unknown strategy"):
        DeciderSettings(active_strategy="softmax", auth="open")


@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("epsilon_greedy", {"epsilon": 2}),
        ("epsilon_greedy", {"epsilon": "0.1"}),
        ("thompson", {"seed": -1}),
        ("thompson", {"unknown": 1}),
        ("ucb1", {"c": float("nan")}),
    ],
)
def test_invalid_strategy_params_are_rejected(strategy: str, params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="strategy_params"):
        ExperimentCreate(
            experiment_id="e", arm_ids=["a", "b"], strategy=strategy, strategy_params=params
        )
    with pytest.raises(ValidationError, match="strategy_params"):
        ConfigUpdate(experiment_id="e", strategy=strategy, strategy_params=params)


@pytest.mark.parametrize(
    "arms",
    [["a"], [], ["a", "a"], ["a", "b", "a"], [f"a{i}" for i in range(MAX_ARMS + 1)]],
)
def test_arm_lists_need_two_to_max_unique(arms: list[str]) -> None:
    with pytest.raises(ValidationError):
        ExperimentCreate(experiment_id="e", arm_ids=arms)


def test_add_arms_needs_unique_non_empty() -> None:
    with pytest.raises(ValidationError):
        ArmsAdd(arm_ids=[])
    with pytest.raises(ValidationError, match="unique"):
        ArmsAdd(arm_ids=["x", "x"])
    assert ArmsAdd(arm_ids=["x", "y"]).arm_ids == ["x", "y"]


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ExperimentCreate.model_validate(
            {"experiment_id": "e", "arm_ids": ["a", "b"], "strategy_param": {}}
        )


@pytest.mark.parametrize("reward", [math.nan, math.inf, -math.inf, -0.1, 1.0001, True, "1.0", None])
def test_bad_rewards_are_rejected(reward: object) -> None:
    with pytest.raises(ValidationError):
        RewardCreate.model_validate({"experiment_id": "e", "arm_id": "a", "reward": reward})


@pytest.mark.parametrize("reward", [0, 1, 0.0, 0.5, 1.0])
def test_good_rewards_are_accepted(reward: float) -> None:
    body = RewardCreate.model_validate({"experiment_id": "e", "arm_id": "a", "reward": reward})
    assert body.reward == float(reward)
    assert body.decision_id is None


def test_reward_decision_and_event_ids_are_bounded() -> None:
    with pytest.raises(ValidationError):
        RewardCreate(experiment_id="e", arm_id="a", reward=1.0, decision_id="x" * 65)
    with pytest.raises(ValidationError):
        RewardCreate(experiment_id="e", arm_id="a", reward=1.0, event_id="a:b")
    ok = RewardCreate(experiment_id="e", arm_id="a", reward=1.0, event_id="retry-key-1")
    assert ok.event_id == "retry-key-1"


def test_config_update_requires_a_strategy() -> None:
    with pytest.raises(ValidationError):
        ConfigUpdate.model_validate({"experiment_id": "e"})


def test_openapi_is_complete_without_any_io() -> None:
    """Every route has a summary, a description and a documented 2xx schema."""
    spec = create_app().openapi()
    expected = {
        ("get", "/health"),
        ("get", "/ready"),
        ("post", "/experiments"),
        ("get", "/experiments"),
        ("get", "/experiments/{experiment_id}"),
        ("post", "/experiments/{experiment_id}/arms"),
        ("post", "/config"),
        ("get", "/decision"),
        ("post", "/reward"),
        ("get", "/experiments/{experiment_id}/stats"),
    }
    found = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert expected <= found
    for method, path in expected:
        op = spec["paths"][path][method]
        assert op.get("summary"), (method, path)
        assert op.get("description"), (method, path)
        ok = next(code for code in op["responses"] if code.startswith("2"))
        assert "application/json" in op["responses"][ok]["content"], (method, path)
    schemas = spec["components"]["schemas"]
    for name in ("ExperimentCreate", "ExperimentPublic", "DecisionPublic", "RewardCreate"):
        assert schemas[name].get("examples"), name

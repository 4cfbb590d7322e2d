"""Request validation of the decider: whatever passes becomes an immutable event."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import JsonValue, ValidationError

from schemas.events import USER_CONTEXT_MAX_BYTES, USER_CONTEXT_MAX_KEYS
from schemas.ids import MAX_ARMS_CEILING
from services.decider.app import create_app
from services.decider.models import ArmsAdd, ConfigUpdate, ExperimentCreate, RewardCreate
from services.decider.settings import DeciderSettings

pytestmark = pytest.mark.unit

BAD_IDS: list[Any] = [
    "",
    "   ",
    "\t",
    "a\nb",
    "x" * 121,
    " " + "x" * 121,
    "arm\u200b",  # zero-width space (format character)
    "a\u00a0b",  # no-break space (a separator other than the ASCII space)
    "a\x7fb",
    "a\ud800",
    5,
    None,
]
#: Ids of the original API that storefront teams use, with what they become.
GOOD_IDS = [
    (" a ", "a"),
    ("Free Shipping", "Free Shipping"),
    ("10% off", "10% off"),
    ("a:b", "a:b"),
    ("x*", "x*"),
    ("{e}", "{e}"),
    ("Livraison gratuite été", "Livraison gratuite été"),
    ("a/b|c", "a/b|c"),
    ("\t" + "x" * 120 + "\n", "x" * 120),
    ("-leading-dash", "-leading-dash"),
]


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


@pytest.mark.parametrize(("given", "stored"), GOOD_IDS)
def test_printable_ids_are_trimmed_and_accepted(given: str, stored: str) -> None:
    body = ExperimentCreate(experiment_id=given, arm_ids=[given, "other"])
    assert body.experiment_id == stored
    assert body.arm_ids == [stored, "other"]
    assert RewardCreate(experiment_id=given, arm_id=given, reward=1.0).arm_id == stored


def test_arms_are_unique_after_trimming() -> None:
    with pytest.raises(ValidationError, match="unique"):
        ExperimentCreate(experiment_id="e", arm_ids=[" a", "a "])


def test_id_errors_say_which_rule_broke() -> None:
    with pytest.raises(ValidationError, match="non-printable character U\\+0009"):
        ExperimentCreate(experiment_id="a\tb", arm_ids=["a", "b"])
    with pytest.raises(ValidationError, match="121 characters after trimming"):
        ExperimentCreate(experiment_id="x" * 121, arm_ids=["a", "b"])
    with pytest.raises(ValidationError, match="must not be empty"):
        ExperimentCreate(experiment_id=" ", arm_ids=["a", "b"])


def test_valid_create_keeps_the_original_api_shape() -> None:
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
def test_original_api_strategy_spellings_are_normalised(given: str, expected: str) -> None:
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
    [["a"], [], ["a", "a"], ["a", "b", "a"], [f"a{i}" for i in range(MAX_ARMS_CEILING + 1)]],
)
def test_arm_lists_need_two_to_the_ceiling_unique(arms: list[str]) -> None:
    """The configurable cap (``MAB_MAX_ARMS``) is the route's; the model bounds a body."""
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


def test_user_context_is_accepted_and_kept() -> None:
    context = {"segment": "returning", "device": {"type": "mobile", "dpr": 2.5}, "tags": [1, None]}
    body = RewardCreate.model_validate(
        {"experiment_id": "e", "arm_id": "a", "reward": 1.0, "user_context": context}
    )
    assert body.user_context == context
    assert RewardCreate(experiment_id="e", arm_id="a", reward=1.0).user_context is None


@pytest.mark.parametrize(
    ("context", "match"),
    [
        ({f"k{i}": i for i in range(USER_CONTEXT_MAX_KEYS + 1)}, "33 keys; at most 32"),
        ({"blob": "x" * USER_CONTEXT_MAX_BYTES}, "bytes as JSON; at most 2048"),
        ({"x": math.nan}, "NaN or infinite"),
        ({"x": [{"y": math.inf}]}, "NaN or infinite"),
        (["not", "an", "object"], "valid dictionary"),
        ("segment=new", "valid dictionary"),
    ],
)
def test_user_context_beyond_its_bounds_is_rejected(context: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        RewardCreate.model_validate(
            {"experiment_id": "e", "arm_id": "a", "reward": 1.0, "user_context": context}
        )


def test_user_context_at_its_bounds_is_accepted() -> None:
    keys: dict[str, JsonValue] = {f"k{i}": i for i in range(USER_CONTEXT_MAX_KEYS)}
    assert RewardCreate(experiment_id="e", arm_id="a", reward=1.0, user_context=keys).user_context
    # {"b":"..."} is 8 bytes of JSON around the string.
    largest: dict[str, JsonValue] = {"b": "x" * (USER_CONTEXT_MAX_BYTES - 8)}
    assert RewardCreate(experiment_id="e", arm_id="a", reward=1.0, user_context=largest)
    with pytest.raises(ValidationError):
        RewardCreate(
            experiment_id="e",
            arm_id="a",
            reward=1.0,
            user_context={"b": "x" * (USER_CONTEXT_MAX_BYTES - 7)},
        )


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

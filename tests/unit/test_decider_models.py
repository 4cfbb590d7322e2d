"""The decider's additions to the API's request models: the strategy names and params
it runs, checked before anything is stored; and the OpenAPI document they produce."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bandit_core.strategies import EpsilonGreedy
from mab_client import models as api
from schemas.events import RewardType
from services.decider.app import create_app
from services.decider.models import ConfigUpdate, ExperimentCreate, reward_type_mismatch
from services.decider.settings import DeciderSettings

pytestmark = pytest.mark.unit


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


CREATE = {"experiment_id": "e", "arm_ids": ["a", "b"]}


@pytest.mark.parametrize(
    ("server", "shape", "body"),
    [
        (ExperimentCreate, api.ExperimentCreate, CREATE),
        (ConfigUpdate, api.ConfigUpdate, {"experiment_id": "e"}),
    ],
)
def test_the_decider_adds_checks_not_fields(
    server: type[Any], shape: type[Any], body: dict[str, Any]
) -> None:
    """The shape is the SDK's: same fields, same schema; only validators are added."""
    assert issubclass(server, shape)
    assert server.model_fields.keys() == shape.model_fields.keys()
    assert server.model_json_schema() == shape.model_json_schema()
    with pytest.raises(ValidationError, match="non-printable"):
        server.model_validate({**body, "experiment_id": "a\x00", "strategy": "ucb1"})
    # A name the SDK cannot judge passes its model and is refused by the server's.
    assert shape.model_validate({**body, "strategy": "softmax"}).strategy == "softmax"
    with pytest.raises(ValidationError, match="thompson"):
        server.model_validate({**body, "strategy": "softmax"})


@pytest.mark.parametrize("model", [ExperimentCreate, api.ExperimentCreate])
def test_a_cap_needs_a_continuous_experiment(model: type[api.ExperimentCreate]) -> None:
    """The SDK refuses it in the caller's process, the server's model alike (422)."""
    with pytest.raises(ValidationError, match="reward_cap is only allowed with reward_type=c"):
        model.model_validate({**CREATE, "reward_cap": 100})
    with pytest.raises(ValidationError, match="reward_type"):
        model.model_validate({**CREATE, "reward_type": "revenue"})
    with pytest.raises(ValidationError, match="reward_cap"):
        model.model_validate({**CREATE, "reward_type": "continuous", "reward_cap": 0})
    body = model.model_validate({**CREATE, "reward_type": "continuous", "reward_cap": 100})
    assert (body.reward_type, body.reward_cap) == ("continuous", 100)
    assert model.model_validate(CREATE).reward_type == "binary"


def test_a_strategy_must_learn_from_the_experiments_reward_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every strategy learns from binary rewards; one that does not declare continuous
    ones is refused for a continuous experiment, with the ones that fit named."""
    assert reward_type_mismatch("thompson", "binary") is None
    message = reward_type_mismatch("thompson", "continuous")
    assert message is not None
    assert message.startswith(
        "strategy 'thompson' learns from binary rewards; reward_type=continuous needs a "
        "strategy for continuous rewards ("
    )
    both: frozenset[RewardType] = frozenset({"binary", "continuous"})
    monkeypatch.setattr(EpsilonGreedy, "reward_types", both)
    assert reward_type_mismatch("epsilon_greedy", "continuous") is None
    assert "epsilon_greedy" in (reward_type_mismatch("ucb1", "continuous") or "")


@pytest.mark.parametrize(
    "change",
    [
        {"reward_type": "continuous"},
        {"reward_type": "binary"},
        {"reward_cap": 10},
        {"reward_cap": None},
    ],
)
def test_the_reward_settings_are_fixed_at_creation(change: dict[str, Any]) -> None:
    """Live folding checks a reward under the config it reads then, replay under the
    final one: they agree only while the reward settings never change."""
    name = next(iter(change))
    for model in (ConfigUpdate, api.ConfigUpdate):
        with pytest.raises(ValidationError, match=f"{name} cannot change after creation"):
            model.model_validate({"experiment_id": "e", "strategy": "ucb1", **change})

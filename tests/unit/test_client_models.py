"""The API's request models (``mab_client.models``): the shapes the decider serves and
the SDK builds its bodies with, so whatever passes becomes an immutable event."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue, ValidationError

from mab_client.ids import MAX_ARMS_CEILING
from mab_client.models import (
    USER_CONTEXT_MAX_BYTES,
    USER_CONTEXT_MAX_KEYS,
    ArmsAdd,
    ExperimentCreate,
    RewardCreate,
    RewardItem,
    check_user_context,
)

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


@pytest.mark.parametrize(
    "reward", [math.nan, math.inf, -math.inf, -0.1, 1e6 + 0.5, 1e300, True, "1.0", None]
)
def test_bad_rewards_are_rejected(reward: object) -> None:
    """Refused in the caller's process: NaN, infinities, negatives and amounts above
    REWARD_CEILING, whatever the experiment (above 1 on a binary one is the server's 422)."""
    with pytest.raises(ValidationError):
        RewardCreate.model_validate({"experiment_id": "e", "arm_id": "a", "reward": reward})


@pytest.mark.parametrize("reward", [0, 1, 0.0, 0.5, 1.0, 1.0001, 42.5, 1e6])
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


def test_an_integer_the_log_cannot_encode_is_refused_as_the_server_refused_it() -> None:
    """orjson, the server's log encoder, writes 64-bit integers only; the check refuses
    a larger one with orjson's own words, so the 422 reads as it did."""
    for big in (2**64, -(2**63) - 1):
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps({"n": big})
        with pytest.raises(ValidationError, match="not encodable as JSON: Integer exceeds 64-bit"):
            RewardCreate(experiment_id="e", arm_id="a", reward=1.0, user_context={"n": [big]})
    for edge in (2**64 - 1, -(2**63)):
        assert RewardCreate(experiment_id="e", arm_id="a", reward=1.0, user_context={"n": edge})


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=8), _json, max_size=USER_CONTEXT_MAX_KEYS))
def test_the_size_is_measured_as_the_server_writes_the_context(context: dict[str, Any]) -> None:
    """The SDK has no orjson, yet must measure the bytes the server logs: the check
    accepts a finite context exactly when orjson writes it within the bound."""
    finite = all(not isinstance(v, float) or math.isfinite(v) for v in _leaves(context))
    fits = len(orjson.dumps(context)) <= USER_CONTEXT_MAX_BYTES
    try:
        check_user_context(context)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == (finite and fits)


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def test_a_reward_item_is_a_reward_body_with_an_event_id() -> None:
    """The SDK's item is the API's body: same rules, plus a fresh idempotency key."""
    item = RewardItem(experiment_id=" e ", arm_id="a", reward=1)
    assert item.body() == {
        "experiment_id": "e",
        "arm_id": "a",
        "reward": 1.0,
        "event_id": item.event_id,
    }
    assert RewardCreate.model_validate(item.body()) == RewardCreate(
        experiment_id="e", arm_id="a", reward=1.0, event_id=item.event_id
    )
    assert item.event_id != RewardItem(experiment_id="e", arm_id="a", reward=1).event_id
    for bad in ({"arm_id": "a\tb"}, {"reward": -1.5}, {"event_id": "a:b"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            RewardItem.model_validate({"experiment_id": "e", "arm_id": "a", "reward": 1.0, **bad})

"""Events and ids: round trips, and every way a record can be rejected, with its reason."""

from __future__ import annotations

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from schemas.codec import MAX_RECORD_BYTES, DecodeError, decode, decode_reward, encode
from schemas.events import (
    SCHEMA_VERSION,
    AnyEvent,
    ArmsAdded,
    DecisionMade,
    ExperimentConfig,
    ExperimentCreated,
    RewardObserved,
    StrategyChanged,
)
from schemas.ids import ID_MAX_LEN, ArmId, InvalidIdError, is_valid_id, normalize_id

pytestmark = pytest.mark.unit

CONFIG = ExperimentConfig(
    experiment_id="cta-button-test",
    arm_ids=("blue-button", "green-button"),
    strategy="epsilon_greedy",
    strategy_params={"epsilon": 0.2, "seed": 42},
    version=1,
    created_ts=1_700_000_000.0,
    updated_ts=1_700_000_000.0,
)

EVENTS: list[AnyEvent] = [
    ExperimentCreated(experiment_id="cta-button-test", config=CONFIG),
    ArmsAdded(
        experiment_id="cta-button-test",
        added_arm_ids=("red-button",),
        config=CONFIG.model_copy(update={"arm_ids": (*CONFIG.arm_ids, "red-button"), "version": 2}),
    ),
    StrategyChanged(
        experiment_id="cta-button-test",
        previous_strategy="epsilon_greedy",
        previous_params={"epsilon": 0.2},
        config=CONFIG.model_copy(
            update={"strategy": "thompson", "strategy_params": {}, "version": 3}
        ),
    ),
    DecisionMade(
        experiment_id="cta-button-test",
        decision_id="0" * 32 + ".1",
        arm_id="green-button",
        strategy="thompson",
        propensity=0.37,
        config_version=3,
        snapshot_version=12,
        degraded=True,
    ),
    RewardObserved(experiment_id="cta-button-test", arm_id="blue-button", reward=0.5),
    RewardObserved(
        experiment_id="cta-button-test",
        arm_id="blue-button",
        reward=1.0,
        decision_id="f" * 32 + ".0",
        source="bulk",
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_round_trip(event: AnyEvent) -> None:
    raw = encode(event)
    back = decode(raw)
    assert back == event
    assert type(back) is type(event)
    assert encode(back) == raw
    assert orjson.loads(raw)["schema_version"] == SCHEMA_VERSION


def test_decode_reward_minimal_contract() -> None:
    raw = orjson.dumps({"experiment_id": "exp", "arm_id": "a", "reward": 1})
    event = decode_reward(raw, fallback_event_id="rewards-0-17", fallback_ts=123.0)
    assert event.event_id == "rewards-0-17"
    assert event.ts == 123.0
    assert event.reward == 1.0
    with pytest.raises(DecodeError) as info:
        decode_reward(encode(EVENTS[3]))
    assert info.value.reason == "wrong_event_type"


def _reward(**overrides: object) -> bytes:
    obj: dict[str, object] = {
        "type": "reward_observed",
        "event_id": "e1",
        "ts": 1.0,
        "experiment_id": "exp",
        "arm_id": "a",
        "reward": 1.0,
    }
    obj.update(overrides)
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b'{"reward": NaN}', "non_finite_reward"),
        (b"[1, 2]", "not_an_object"),
        (b'"reward"', "not_an_object"),
        (b"null", "not_an_object"),
        (_reward(reward=1.5), "reward_out_of_range"),
        (_reward(reward=-0.1), "reward_out_of_range"),
        (_reward(reward="NaN"), "non_finite_reward"),
        (_reward(reward="inf"), "non_finite_reward"),
        (_reward(reward="abc"), "wrong_type"),
        (_reward(schema_version=99), "unknown_schema_version"),
        (_reward(schema_version=0), "unknown_schema_version"),
        (_reward(schema_version="1"), "bad_schema_version"),
        (_reward(schema_version=True), "bad_schema_version"),
        (_reward(type="reward_given"), "wrong_event_type"),
        (_reward(arm_id="a\tb"), "bad_id"),
        (_reward(arm_id="  "), "bad_id"),
        (_reward(experiment_id="x" * 121), "bad_id"),
        (_reward(user_context=[1]), "bad_user_context"),
        (_reward(user_context={"x": "y" * 3000}), "bad_user_context"),
        (_reward(user_context={f"k{i}": i for i in range(33)}), "bad_user_context"),
        (_reward(extra_field=1), "unknown_field"),
        (_reward(ts=-1.0), "invalid"),
        (_reward(arm_id=5), "wrong_type"),
        (b'{"experiment_id": "exp", "arm_id": "a", "reward": Infinity}', "non_finite_reward"),
        (b'{"experiment_id": "exp", "ts": NaN, "reward": 1.0}', "bad_json"),
        (b" " * (MAX_RECORD_BYTES + 1), "oversize"),
    ],
)
def test_decode_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_decode_rejects_overflowing_reward() -> None:
    # orjson refuses NaN/Infinity literals and numbers that overflow a double
    raw = _reward().replace(b'"reward":1.0', b'"reward":1e999')
    assert b"1e999" in raw
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.reason == "non_finite_reward"


def test_oversize_checked_before_parsing() -> None:
    big = _reward(source="x" * (MAX_RECORD_BYTES + 10))
    with pytest.raises(DecodeError) as info:
        decode(big)
    assert info.value.reason == "oversize"


def test_unknown_type_field_missing() -> None:
    with pytest.raises(DecodeError) as info:
        decode(orjson.dumps({"experiment_id": "exp", "arm_id": "a", "reward": 1.0}))
    assert info.value.reason == "missing_field"


def test_events_are_frozen() -> None:
    event = EVENTS[4]
    assert isinstance(event, RewardObserved)
    with pytest.raises(ValidationError):
        event.reward = 0.0  # type: ignore[misc]


def test_model_rejects_nan_reward_and_bad_propensity() -> None:
    with pytest.raises(ValidationError):
        RewardObserved(experiment_id="e", arm_id="a", reward=float("nan"))
    with pytest.raises(ValidationError):
        RewardObserved(experiment_id="e", arm_id="a", reward=float("inf"))
    with pytest.raises(ValidationError):
        DecisionMade(
            experiment_id="e",
            decision_id="d",
            arm_id="a",
            strategy="ucb1",
            propensity=0.0,
            config_version=1,
            snapshot_version=0,
        )


_ARM_ID: TypeAdapter[str] = TypeAdapter(ArmId)


@pytest.mark.parametrize(
    "value",
    [
        "arm\u200b",  # zero-width space: a format character
        "a\u00a0b",  # no-break space: a separator other than the ASCII space
        "a\u2028b",  # line separator
        "a\x7fb",
        "a\x00b",
        "a\ud800b",  # a lone surrogate (not encodable as UTF-8)
        "a\ue000b",  # private use
        "x" * (ID_MAX_LEN + 1),
        "",
        "   ",
        "line\nbreak",
        "tab\there",
    ],
)
def test_bad_ids_rejected(value: str) -> None:
    assert not is_valid_id(value)
    with pytest.raises(InvalidIdError):
        normalize_id(value)
    with pytest.raises(ValidationError):
        _ARM_ID.validate_python(value)
    with pytest.raises(ValidationError):
        RewardObserved(experiment_id=value, arm_id="a", reward=1.0)


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "blue-button",
        "A.b_c-9",
        "x" * ID_MAX_LEN,
        "a:b",
        "a*",
        "{tag}",
        "exp}",
        "café",
        "-leading-dash",
        ".hidden",
        "has space",
        "a/b",
        "10% off",
        "Livraison gratuite été",
        "\uff21",  # fullwidth A
        "日本語",
    ],
)
def test_good_ids_accepted(value: str) -> None:
    assert is_valid_id(value)
    assert normalize_id(value) == value
    assert _ARM_ID.validate_python(value) == value


@pytest.mark.parametrize(
    ("value", "trimmed"),
    [(" a ", "a"), ("\ta\n", "a"), ("\u00a0a\u3000", "a"), (" " * 5 + "x" * ID_MAX_LEN, "x" * 120)],
)
def test_ids_are_trimmed_first(value: str, trimmed: str) -> None:
    assert not is_valid_id(value)  # valid only once trimmed
    assert normalize_id(value) == trimmed
    assert _ARM_ID.validate_python(value) == trimmed
    assert RewardObserved(experiment_id=value, arm_id=value, reward=1.0).arm_id == trimmed


def test_is_valid_id_non_strings() -> None:
    assert not is_valid_id(None)
    assert not is_valid_id(12)
    assert not is_valid_id(b"abc")


def test_is_valid_id_rejects_trailing_newline() -> None:
    assert not is_valid_id("abc\n")

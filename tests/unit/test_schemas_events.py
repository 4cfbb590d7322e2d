"""Events and ids: round trips, and every way a record can be rejected, with its reason."""

from __future__ import annotations

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from schemas.codec import MAX_RECORD_BYTES, DecodeError, decode, decode_reward, encode
from schemas.events import (
    DEFAULT_STICKY_TTL_S,
    MAX_STICKY_TTL_S,
    SALT_HEX_DIGITS,
    SCHEMA_VERSION,
    AnyEvent,
    ArmsAdded,
    DecisionMade,
    ExperimentConfig,
    ExperimentCreated,
    RewardObserved,
    StrategyChanged,
    new_salt,
)
from schemas.ids import ID_MAX_LEN, ArmId, InvalidIdError, is_valid_id, normalize_id
from tests.fixtures.events import decision_of

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
    decision_of("cta-button-test", "green-button", 1, propensity=0.37, degraded=True),
    RewardObserved(experiment_id="cta-button-test", arm_id="blue-button", reward=0.5),
    RewardObserved(
        experiment_id="cta-button-test",
        arm_id="blue-button",
        reward=1.0,
        decision_id="f" * 32 + ".0",
        source="bulk",
    ),
    ExperimentCreated(
        experiment_id="cta-button-test",
        config=CONFIG.model_copy(
            update={
                "assignment": "consistent",
                "sticky_ttl_s": None,
                "unit_id_storage": "raw",
                "salt": "0123456789abcdef",
                "min_arm_share": 0.25,
                "allocation_interval_s": 5,
            }
        ),
    ),
    decision_of(
        "cta-button-test",
        "blue-button",
        0,
        unit_id="visitor été 42",
        assignment="local",
        allocation_version=29_603_160,
        exposure_id="ex-7",
    ),
    RewardObserved(
        experiment_id="cta-button-test", arm_id="blue-button", reward=1.0, unit_id="a" * 32
    ),
]

#: A config as the decider stored it before the assignment settings existed.
OLD_CONFIG_JSON = (
    b'{"experiment_id":"Free Shipping","arm_ids":["a","b"],"strategy":"thompson",'
    b'"strategy_params":{},"version":4,"created_ts":1700000000.0,"updated_ts":1700000001.0,'
    b'"attribution_window_s":null,"default_reward":0.0}'
)


def test_a_config_stored_before_assignment_settings_reads_with_the_defaults() -> None:
    config = ExperimentConfig.model_validate_json(OLD_CONFIG_JSON)
    assert config.salt == "Free Shipping"  # its units hash as its experiment id says
    assert (config.assignment, config.unit_id_storage) == ("sticky", "hashed")
    assert config.sticky_ttl_s == DEFAULT_STICKY_TTL_S == 30 * 24 * 3600
    assert (config.min_arm_share, config.allocation_interval_s) == (0.0, 60)
    assert (config.reward_type, config.reward_cap) == ("binary", None)
    # Every field it had keeps its value and its bytes.
    assert config.model_dump_json().encode().startswith(OLD_CONFIG_JSON[:-1])
    old_event = orjson.dumps(
        {
            "experiment_id": "Free Shipping",
            "type": "experiment_created",
            "event_id": "e",
            "ts": 1.0,
            "config": orjson.loads(OLD_CONFIG_JSON),
        }
    )
    decoded = decode(old_event)
    assert isinstance(decoded, ExperimentCreated)
    assert decoded.config == config


def test_new_salts_are_random_hex() -> None:
    salts = {new_salt() for _ in range(200)}
    assert len(salts) == 200
    assert all(len(s) == SALT_HEX_DIGITS and int(s, 16) >= 0 for s in salts)
    assert CONFIG.model_copy(update={"salt": salts.pop()}).salt != CONFIG.salt


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_arm_share": 0.51}, "at most 0.5 with 2 arms"),
        ({"min_arm_share": -0.1}, "greater than or equal"),
        ({"sticky_ttl_s": MAX_STICKY_TTL_S + 1}, "less than or equal"),
        ({"sticky_ttl_s": 0}, "greater than or equal"),
        ({"allocation_interval_s": 4}, "greater than or equal to 5"),
        ({"allocation_interval_s": 3601}, "less than or equal to 3600"),
        ({"assignment": "random"}, "sticky"),
        ({"unit_id_storage": "plain"}, "hashed"),
        ({"salt": "x" * 121}, "at most 120"),
    ],
)
def test_assignment_settings_are_validated(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExperimentConfig.model_validate({**CONFIG.model_dump(), **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reward_type": "revenue"}, "'binary' or 'continuous'"),
        ({"reward_cap": 10.0}, "reward_cap is only allowed with reward_type=continuous"),
        ({"reward_type": "binary", "reward_cap": 1.0}, "only allowed with reward_type=cont"),
        ({"reward_type": "continuous", "reward_cap": 0.0}, "greater than 0"),
        ({"reward_type": "continuous", "reward_cap": -5.0}, "greater than 0"),
        ({"reward_type": "continuous", "reward_cap": float("inf")}, "finite number"),
        ({"reward_type": "continuous", "reward_cap": float("nan")}, "finite number"),
        ({"reward_type": "continuous", "reward_cap": 1e6 + 1}, "less than or equal to 1000000"),
    ],
)
def test_reward_settings_are_validated(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExperimentConfig.model_validate({**CONFIG.model_dump(), **change})


def test_a_continuous_config_round_trips_with_its_cap() -> None:
    config = ExperimentConfig.model_validate(
        {**CONFIG.model_dump(), "reward_type": "continuous", "reward_cap": 250.0}
    )
    assert ExperimentConfig.model_validate_json(config.model_dump_json()) == config
    assert (config.reward_type, config.reward_cap) == ("continuous", 250.0)


@pytest.mark.parametrize("reward", [0.0, 1.0, 1.5, 42.5, 1e6])
def test_a_reward_record_takes_any_amount_up_to_the_ceiling(reward: float) -> None:
    """The record's bound is every experiment's; the experiment's own (binary: [0, 1])
    is the fold's rule (bandit_core.fold.reward_rejection)."""
    event = decode(_reward(reward=reward))
    assert isinstance(event, RewardObserved)
    assert event.reward == reward


def test_the_floor_fits_exactly_at_one_over_k() -> None:
    arms = tuple(f"arm-{i}" for i in range(7))
    config = ExperimentConfig.model_validate(
        {**CONFIG.model_dump(), "arm_ids": arms, "min_arm_share": 1 / 7}
    )
    assert config.min_arm_share == 1 / 7


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"unit_id": "u" * 201}, "bad_id"),
        ({"unit_id": "a\nb"}, "bad_id"),
        ({"assignment": "per_request"}, "invalid"),
        ({"allocation_version": -1}, "invalid"),
        ({"allocation_version": 7.5}, "wrong_type"),
        ({"exposure_id": ""}, "invalid"),
        ({"exposure_id": "x" * 65}, "invalid"),
    ],
)
def test_bad_unit_fields_of_a_decision_are_rejected(change: dict[str, object], reason: str) -> None:
    record = orjson.loads(encode(EVENTS[3])) | change
    with pytest.raises(DecodeError) as info:
        decode(orjson.dumps(record))
    assert info.value.reason == reason


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
        (_reward(reward=1e6 + 1), "reward_out_of_range"),  # above REWARD_CEILING
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

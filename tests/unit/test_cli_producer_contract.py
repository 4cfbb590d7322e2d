"""The published topic contract is what the code generates, and says what the codec does."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import orjson
import pytest

from mab_cli.producer_contract import (
    ASYNCAPI_FILE,
    CONTRACT_DIR,
    SCHEMA_FILE,
    asyncapi_document,
    generated,
    stale,
)
from schemas.codec import DecodeError, decode_reward
from schemas.topics import DECISIONS, REWARDS, REWARDS_DLQ

pytestmark = pytest.mark.unit


def test_committed_files_equal_the_generated_ones() -> None:
    assert stale() == [], "contract files are stale: run `mab contract` (or `make contract`)"
    assert set(generated()) == {SCHEMA_FILE, ASYNCAPI_FILE}


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CONTRACT_DIR / SCHEMA_FILE).read_text())
    return schema


@pytest.mark.parametrize(
    "record",
    [
        {"experiment_id": "cta", "arm_id": "red", "reward": 1},
        {"experiment_id": "cta", "arm_id": "red", "reward": 0.5, "event_id": "o-1", "ts": 1.0},
        {"experiment_id": "cta", "arm_id": "red", "reward": 0, "decision_id": "d", "source": "x"},
        {"experiment_id": "10% off", "arm_id": "Livraison gratuite été", "reward": 1},
        # an order value: the record takes it; a binary experiment dead-letters it
        {"experiment_id": "cart", "arm_id": "upsell", "reward": 42.5},
        {"experiment_id": "a:b", "arm_id": "{e}", "reward": 1, "user_context": {"seg": "new"}},
    ],
)
def test_schema_accepts_what_the_codec_accepts(record: dict[str, Any]) -> None:
    jsonschema.validate(record, _schema())
    decode_reward(orjson.dumps(record), fallback_event_id="p:0:1", fallback_ts=1.0)


@pytest.mark.parametrize(
    "record",
    [
        {"experiment_id": "cta", "arm_id": "red"},
        {"experiment_id": "cta", "arm_id": "red", "reward": 1e6 + 1},  # above REWARD_CEILING
        {"experiment_id": "cta", "arm_id": "red", "reward": -0.1},
        {"experiment_id": "cta", "arm_id": "", "reward": 1},
        {"experiment_id": "cta", "arm_id": "x" * 121, "reward": 1},
        {"experiment_id": "cta", "arm_id": "red", "reward": 1, "user_context": [1]},
        {
            "experiment_id": "cta",
            "arm_id": "red",
            "reward": 1,
            "user_context": {"x": None} | {f"k{i}": i for i in range(40)},
        },
        {"experiment_id": "cta", "arm_id": "red", "reward": 1, "coupon": "x"},
        {"experiment_id": "cta", "arm_id": "red", "reward": 1, "type": "decision_made"},
    ],
)
def test_schema_rejects_what_the_codec_rejects(record: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, _schema())
    with pytest.raises(DecodeError):
        decode_reward(orjson.dumps(record), fallback_event_id="p:0:1", fallback_ts=1.0)


def test_asyncapi_declares_the_three_channels_with_the_event_models() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {REWARDS, DECISIONS, REWARDS_DLQ}
    schemas = doc["components"]["schemas"]
    assert schemas["RewardObserved"]["required"] == ["experiment_id", "arm_id", "reward"]
    assert "mab.dlq.reason" in doc["channels"]["rewards-dlq"]["description"]

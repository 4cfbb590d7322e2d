"""The decision hot path's hand-built event record stays identical to the schema."""

from __future__ import annotations

import orjson
import pytest

from bandit_core.decision_ids import make_decision_id
from schemas.codec import decode, encode
from schemas.events import DecisionMade
from services.decider.hot_path import decision_made_record

pytestmark = pytest.mark.unit


def test_record_has_exactly_the_models_fields_and_decodes() -> None:
    decision_id = make_decision_id(1)
    raw = decision_made_record(
        "cta-button-test",
        decision_id,
        "green-button",
        "thompson",
        {"seed": 42},
        0.25,
        3,
        17,
        False,
    )
    fields = orjson.loads(raw)
    assert set(fields) == set(DecisionMade.model_fields)
    event = decode(raw)
    assert isinstance(event, DecisionMade)
    assert event.decision_id == decision_id
    assert event.arm_id == "green-button"
    assert event.strategy_params == {"seed": 42}
    assert (event.propensity, event.config_version, event.snapshot_version) == (0.25, 3, 17)
    # Same bytes as the model's own encoding of the decoded event: no drift in format.
    assert orjson.loads(encode(event)) == fields


def test_event_ids_are_unique() -> None:
    ids = {
        orjson.loads(decision_made_record("e", "x" * 32 + ".0", "a", "ucb1", {}, 1.0, 1, 0, False))[
            "event_id"
        ]
        for _ in range(1000)
    }
    assert len(ids) == 1000

"""The decision hot path's event record is the model's own wire form."""

from __future__ import annotations

import orjson
import pytest

from bandit_core.decision_ids import make_decision_id
from schemas.codec import decode, encode
from schemas.events import DecisionMade
from schemas.topics import TopicNames
from schemas.wire import encode_decision_made
from services.decider.producer import EventProducer

pytestmark = pytest.mark.unit


def test_record_has_exactly_the_models_fields_and_decodes() -> None:
    decision_id = make_decision_id(1)
    raw = encode_decision_made(
        experiment_id="cta-button-test",
        decision_id=decision_id,
        arm_id="green-button",
        strategy="thompson",
        strategy_params={"seed": 42},
        propensity=0.25,
        config_version=3,
        snapshot_version=17,
        degraded=False,
    )
    fields = orjson.loads(raw)
    # Every field but the unit ones and the holdout mark, which a bandit decision without
    # a unit leaves out.
    assert set(fields) == set(DecisionMade.model_fields) - UNIT_FIELDS - {"holdout"}
    event = decode(raw)
    assert isinstance(event, DecisionMade)
    assert event.decision_id == decision_id
    assert event.arm_id == "green-button"
    assert event.strategy_params == {"seed": 42}
    assert (event.propensity, event.config_version, event.snapshot_version) == (0.25, 3, 17)
    # Same bytes as the model's own encoding of the decoded event: no drift in format.
    assert orjson.loads(encode(event)) == fields
    assert encode(event) == raw


@pytest.mark.parametrize("window", [None, 3600.0])
def test_record_equals_the_models_encoding_byte_for_byte(window: float | None) -> None:
    """Pre-encoded params, defaults and the window encode exactly as the model does."""
    fields: dict[str, object] = {
        "experiment_id": "Free Shipping",
        "decision_id": make_decision_id(0),
        "arm_id": "10% off",
        "strategy": "epsilon_greedy",
        "propensity": 0.9,
        "config_version": 2,
        "snapshot_version": 0,
        "attribution_window_s": window,
    }
    raw = encode_decision_made(
        **fields, strategy_params=orjson.Fragment(b'{"epsilon":0.1}'), degraded=True
    )
    model = DecisionMade.model_validate(
        {**fields, "strategy_params": {"epsilon": 0.1}, "degraded": True, **_ids_of(raw)}
    )
    assert encode(model) == raw
    # The defaults are the model's: no params, not degraded, the current schema version.
    bare = encode_decision_made(**fields)
    assert encode(DecisionMade.model_validate({**fields, **_ids_of(bare)})) == bare


#: The optional fields of a decision with a unit, left out of the record when absent.
UNIT_FIELDS = frozenset({"unit_id", "assignment", "allocation_version", "exposure_id"})


@pytest.mark.parametrize(
    "unit",
    [
        {"unit_id": "0123456789abcdef" * 2, "assignment": "sticky", "allocation_version": 0},
        {"unit_id": "Visitor été 42", "assignment": "consistent", "allocation_version": 2**40},
        {"unit_id": "u" * 200, "assignment": "local", "allocation_version": 7, "exposure_id": "x"},
        {"unit_id": "per-request-visitor"},
        {"unit_id": "held-out-visitor", "holdout": True},
    ],
)
def test_unit_fields_encode_as_the_model_does(unit: dict[str, object]) -> None:
    """The unit fields given are written, in the model's order, and only those."""
    fields: dict[str, object] = {**REQUIRED, "attribution_window_s": 60.0, **unit}
    raw = encode_decision_made(**fields)
    omitted = UNIT_FIELDS | {"holdout"}
    assert set(orjson.loads(raw)) == set(DecisionMade.model_fields) - omitted | set(unit)
    model = DecisionMade.model_validate({**fields, **_ids_of(raw)})
    assert encode(model) == raw
    assert decode(raw) == model


#: The fields a decision record cannot do without (the rest have the model's defaults).
REQUIRED: dict[str, object] = {
    "experiment_id": "e",
    "decision_id": "x" * 32 + ".0",
    "arm_id": "a",
    "strategy": "ucb1",
    "propensity": 1.0,
    "config_version": 1,
    "snapshot_version": 0,
}


def test_a_missing_or_unknown_field_is_refused() -> None:
    for name in REQUIRED:
        with pytest.raises(TypeError, match=name):
            encode_decision_made(**{k: v for k, v in REQUIRED.items() if k != name})
    with pytest.raises(TypeError, match="arm_index"):
        encode_decision_made(**REQUIRED, arm_index=0)


def _ids_of(raw: bytes) -> dict[str, object]:
    written = orjson.loads(raw)
    return {"event_id": written["event_id"], "ts": written["ts"]}


def test_event_ids_are_unique() -> None:
    ids = {orjson.loads(encode_decision_made(**REQUIRED))["event_id"] for _ in range(1000)}
    assert len(ids) == 1000


class _FullQueue:
    """A stand-in for librdkafka's decision producer whose queue is full ``full_for``
    more times before it takes records (librdkafka raises ``BufferError`` then)."""

    def __init__(self, full_for: int) -> None:
        self.full_for = full_for
        self.taken: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        if self.full_for > 0:
            self.full_for -= 1
            raise BufferError("Local: Queue full")
        self.taken.append((topic, key, value))

    def __len__(self) -> int:
        return 0


def _producer(queue: _FullQueue, enqueue_timeout_s: float) -> EventProducer:
    producer = EventProducer(
        "127.0.0.1:1",  # never contacted: the decision producer is replaced
        TopicNames.with_prefix("t-"),
        send_timeout_s=1.0,
        enqueue_timeout_s=enqueue_timeout_s,
        linger_ms=5,
    )
    producer._decisions = queue  # type: ignore[assignment]
    return producer


async def test_a_full_decision_queue_is_backpressure_not_loss() -> None:
    """Scenario: the decision queue is full for the first try and two retries.
    We expect: ``try_send`` says so without waiting; ``send_when_room`` waits until the
    queue takes the record, which is enqueued once and counted once, none failed."""
    queue = _FullQueue(full_for=3)
    producer = _producer(queue, enqueue_timeout_s=2.0)
    assert producer.try_send("t-decisions", b"k", b"v") is False
    assert await producer.send_when_room("t-decisions", b"k", b"v") is True
    assert queue.taken == [("t-decisions", b"k", b"v")]
    assert (producer.stats.enqueued, producer.stats.failed) == (1, 0)


async def test_a_decision_queue_full_past_the_timeout_counts_a_failure() -> None:
    """Scenario: the queue stays full longer than ``enqueue_timeout_s`` (0.05 s).
    We expect: ``send_when_room`` gives up with ``False``, the event is counted failed
    with the reason, and nothing was enqueued."""
    queue = _FullQueue(full_for=10**6)
    producer = _producer(queue, enqueue_timeout_s=0.05)
    assert await producer.send_when_room("t-decisions", b"k", b"v") is False
    assert queue.taken == []
    stats = producer.stats
    assert (stats.enqueued, stats.failed) == (0, 1)
    assert "queue full" in stats.last_error

"""The decision hot path's hand-built event record stays identical to the schema."""

from __future__ import annotations

import orjson
import pytest

from bandit_core.decision_ids import make_decision_id
from schemas.codec import decode, encode
from schemas.events import DecisionMade
from schemas.topics import TopicNames
from services.decider.producer import EventProducer
from services.decider.routes.decisions import decision_made_record

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

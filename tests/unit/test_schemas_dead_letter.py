"""The dead-letter record format: headers round trip, identity by origin, re-drive ids."""

from __future__ import annotations

import orjson
import pytest

from schemas.dead_letter import (
    REDRIVEN,
    DeadLetter,
    dead_letter_headers,
    dedupe,
    redrive_headers,
    redriven_origins,
)
from schemas.events import RewardObserved
from stream_runtime.batch import decode_reward_or_decision
from stream_runtime.kafka_consumer import KafkaRecord as Rec

pytestmark = pytest.mark.unit


def letter(
    dlq_offset: int, reason: str, offset: int, *, redriven_from: int | None = None
) -> DeadLetter:
    headers = dead_letter_headers(
        reason=reason,
        detail="why " * 200,
        topic="mab.rewards",
        partition=3,
        offset=offset,
        timestamp=1_700_000_000_000,
        rejected_by="g/c",
        rejected_at_ms=1_700_000_000_500,
        original=(
            redrive_headers("mab.rewards", 3, redriven_from, 1) if redriven_from is not None else ()
        ),
    )
    return DeadLetter.parse(dlq_offset, b"exp", b"raw", headers)


def test_headers_round_trip() -> None:
    d = letter(7, "unknown_arm", 42)
    assert (d.reason, d.source_topic, d.source_partition, d.source_offset) == (
        "unknown_arm",
        "mab.rewards",
        3,
        42,
    )
    assert (d.source_timestamp, d.rejected_by, d.rejected_at_ms) == (
        1_700_000_000_000,
        "g/c",
        1_700_000_000_500,
    )
    assert len(d.detail) == 300  # bounded
    assert d.origin == d.position == ("mab.rewards", 3, 42)
    unlabelled = DeadLetter.parse(0, None, b"x", [])
    assert unlabelled.reason == "unlabelled"
    assert unlabelled.source_offset == -1


def test_dedupe_keeps_latest_real_entry_per_origin() -> None:
    first = letter(0, "unknown_experiment", 5)
    again = letter(1, "unknown_experiment", 5)  # redelivered batch
    other = letter(2, "bad_json", 6)
    marker = letter(3, REDRIVEN, 5)
    rejected_again = letter(4, "unknown_arm", 99, redriven_from=5)
    assert rejected_again.origin == ("mab.rewards", 3, 5)
    assert dedupe([first, again, other]) == [again, other]
    assert redriven_origins([first, again, other, marker]) == {("mab.rewards", 3, 5)}
    assert dedupe([first, again, other, marker]) == [again, other]  # marker hides nothing
    both = [first, again, other, marker, rejected_again]
    assert redriven_origins(both) == set()  # open again
    assert dedupe(both) == [rejected_again, other]


def test_redriven_minimal_reward_keeps_its_original_identity() -> None:
    raw = orjson.dumps({"experiment_id": "e", "arm_id": "a", "reward": 1})
    original = Rec("mab.rewards", 1, 7, 1_000, raw)
    redriven = Rec(
        "mab.rewards", 4, 900, 2_000, raw, headers=list(redrive_headers("mab.rewards", 1, 7, 5))
    )
    a = decode_reward_or_decision(original, "mab.rewards", "mab.decisions")
    b = decode_reward_or_decision(redriven, "mab.rewards", "mab.decisions")
    assert isinstance(a, RewardObserved)
    assert isinstance(b, RewardObserved)
    assert a.event_id == b.event_id == "mab.rewards:1:7"
    with_id = orjson.dumps({"experiment_id": "e", "arm_id": "a", "reward": 1, "event_id": "x"})
    c = decode_reward_or_decision(
        Rec("mab.rewards", 4, 901, 2_000, with_id, headers=redriven.headers), "mab.rewards", "d"
    )
    assert c is not None
    assert c.event_id == "x"

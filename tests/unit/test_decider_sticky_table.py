"""The sticky table's projection (services/decider/sticky_table.py) and how replay's
driver collects its rows.

Scenario: a decisions partition holding sticky decisions (one unit assigned twice, its
first assignment long expired), consistent and per_request decisions, a sticky decision
of an experiment without config. We expect one row per live sticky unit, holding the
decider's own stored value and expiring ``sticky_ttl_s`` after the decision, the last
assignment of a unit winning, nothing for other modes or expired units, and no key of
the processor's guard among the keys replay writes to the namespace.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from schemas.codec import encode
from schemas.events import DecisionMade, ExperimentConfig
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.decider import Assignment, StickyTable
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.processor import Loaded, TableProjection, TableRow
from stream_runtime.replay import PartitionReplayer, ReplayPlan
from tests.fixtures.events import config_of, decision_of

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
TTL = 3600
TOPICS = TopicNames.with_prefix("t.")
SCRATCH = RedisKeys("live-replay-1-")
LIVE = RedisKeys("live-")


def sticky(unit: str, index: int, ts: float, **fields: object) -> DecisionMade:
    return decision_of(
        "cta",
        "ab"[index],
        index,
        ts,
        propensity=0.25 + 0.5 * index,
        unit_id=unit,
        assignment="sticky",
        allocation_version=int(ts // 60),
        **fields,
    )


def loaded(config: ExperimentConfig | None) -> Loaded:
    raw = None if config is None else config.model_dump_json().encode()
    return Loaded(offsets={}, values={SCRATCH.experiment("cta").config: raw})


def table() -> StickyTable:
    return StickyTable(TOPICS, SCRATCH, LIVE)


def test_a_sticky_decision_becomes_the_deciders_stored_value_with_its_expiry() -> None:
    d = sticky("u1", 1, NOW - 10)
    applied = table().apply("cta", [d], loaded(config_of("cta", "ab", sticky_ttl_s=TTL)), NOW)
    assert applied.changes is not None
    assert applied.skipped == []
    [row] = applied.outputs
    assert row == TableRow(LIVE.unit("cta", "u1"), row.value, NOW - 10 + TTL)
    stored = Assignment.decode(row.value)
    assert stored == Assignment(1, d.decision_id, 0.75, int((NOW - 10) // 60), NOW - 10)
    assert applied.report.rows == 1


def test_other_modes_expired_units_and_bad_ids_give_no_row() -> None:
    events = [
        decision_of(
            "cta", "a", 0, NOW, unit_id="c1", assignment="consistent", allocation_version=1
        ),
        decision_of("cta", "a", 0, NOW, unit_id="p1"),  # per_request: token, no assignment
        decision_of("cta", "b", 1, NOW),  # no unit at all
        sticky("old", 0, NOW - TTL - 1),  # its TTL ended before now
        sticky("bad", 0, NOW).model_copy(update={"decision_id": "not-ours"}),
        sticky("u2", 0, NOW),
    ]
    applied = table().apply("cta", events, loaded(config_of("cta", "ab", sticky_ttl_s=TTL)), NOW)
    assert [r.key for r in applied.outputs] == [LIVE.unit("cta", "u2")]
    r = applied.report
    assert (r.rows, r.expired, r.not_sticky) == (1, 1, 3)
    assert [(s.at, s.reason.value) for s in applied.skipped] == [(4, "bad_decision_id")]


def test_an_experiment_without_ttl_keeps_its_units_forever() -> None:
    d = sticky("u1", 0, 1.0)  # 1970: expired under any TTL
    applied = table().apply("cta", [d], loaded(config_of("cta", "ab", sticky_ttl_s=None)), NOW)
    [row] = applied.outputs
    assert row.expires_at is None


def test_an_experiment_without_config_is_skipped_and_writes_nothing() -> None:
    applied = table().apply("cta", [sticky("u1", 0, NOW)], loaded(None), NOW)
    assert applied.changes is None
    assert applied.outputs == []
    assert [s.reason.value for s in applied.skipped] == ["unknown_experiment"]


def test_same_row_compares_the_assignment_not_the_bytes() -> None:
    t = table()
    a = Assignment(1, "0" * 32 + ".1", 0.75, 7, NOW)
    assert isinstance(t, TableProjection)
    assert t.same_row(a.encode(), a.encode())
    # the decider's ``now`` is taken before its SET, the event's ts after it
    assert t.same_row(a.encode(), Assignment(1, a.decision_id, 0.75, 7, NOW + 0.004).encode())
    assert not t.same_row(a.encode(), Assignment(1, a.decision_id, 0.75, 7, NOW + 61).encode())
    assert not t.same_row(a.encode(), Assignment(0, "0" * 32 + ".0", 0.75, 7, NOW).encode())
    assert not t.same_row(a.encode(), Assignment(1, a.decision_id, 0.5, 7, NOW).encode())
    assert not t.same_row(a.encode(), Assignment(1, a.decision_id, 0.75, 8, NOW).encode())
    assert not t.same_row(b"garbage", a.encode())


def test_replay_keeps_the_last_assignment_of_a_unit_and_writes_no_guard_key() -> None:
    """A unit assigned again after its first assignment expired (or after Redis lost it)
    holds the later one live: replay's rows follow the log's order."""
    config = config_of("cta", "ab", sticky_ttl_s=TTL)
    first, again = sticky("u1", 0, NOW - 2 * TTL + 100), sticky("u1", 1, NOW - 50)
    events = [first, sticky("u2", 0, NOW - 40), again]
    records = [
        KafkaRecord(TOPICS.decisions, 0, offset, int(e.ts * 1000), encode(e))
        for offset, e in enumerate(events)
    ]
    plan = ReplayPlan(
        bootstrap="unused:9092",
        redis_url="redis://unused",
        processors=(table(),),
        configs={"cta": (SCRATCH.experiment("cta").config, config.model_dump_json().encode())},
        partitions=(0,),
        read_until={},
        now=NOW,
    )
    replayer = PartitionReplayer(plan)
    asyncio.run(replayer.apply(records))
    rows = replayer.rows[StickyTable.name]
    assert sorted(rows) == [LIVE.unit("cta", "u1"), LIVE.unit("cta", "u2")]
    latest = Assignment.decode(rows[LIVE.unit("cta", "u1")].value)
    assert latest.decision_id == again.decision_id
    assert math.isclose(latest.expires_at(TTL), NOW - 50 + TTL)
    # the guard's offsets hash lives in replay's memory only, outside every namespace
    assert replayer.state.hashes
    assert replayer.experiment_keys() == {}

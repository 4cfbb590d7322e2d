"""``services.reward_consumer.exposures``: the exposure judge over the memory store.

Records of the exposures topic go through the engine with the judge as they do in the
reward consumer (decisions handed over before the write, refusals to the dead-letter
sink); the state is the memory store, written the way the decider writes it (config,
stored allocation version, REST marks).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from bandit_core.exposures import exposure_event_id
from mab_client.assignment import Allocation
from schemas.events import DecisionMade
from schemas.redis_keys import RedisKeys
from schemas.rejections import Rejection
from schemas.topics import TopicNames
from services.reward_consumer.exposures import ExposureJudge, ExposureReport
from stream_runtime.batch import Rejected
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.state_store import MemoryStateStore
from tests.fixtures.events import config_of
from tests.fixtures.exposures import ARMS, EXP, RECORD, SALT, VERSION

pytestmark = pytest.mark.unit

NS = "t-expo."
TOPICS = TopicNames.with_prefix(NS)
KEYS = RedisKeys(NS)
TTL = 86_400
NOW = 1_776_189_700.0
RULE = Allocation(EXP, VERSION, ARMS, RECORD.weights, SALT)


@dataclass
class Judged:
    """One engine over one memory store, with what it produced and dead-lettered."""

    store: MemoryStateStore
    engine: BatchEngine[ExposureReport]
    produced: list[DecisionMade]
    dead: list[Rejected]

    async def handle(self, *values: bytes | None, first: int = 0) -> ExposureReport:
        ts = 1_776_189_650_000
        records = [KafkaRecord(TOPICS.exposures, 0, first + i, ts, v) for i, v in enumerate(values)]
        return await self.engine.handle(records, now=NOW)


def judged(store: MemoryStateStore | None = None, *, with_experiment: bool = True) -> Judged:
    store = store or MemoryStateStore()
    if with_experiment:
        config = config_of(EXP, ARMS, salt=SALT)
        store.strings[KEYS.experiment(EXP).config] = config.model_dump_json().encode()
        store.strings[KEYS.allocation(EXP, VERSION)] = RECORD.encode()
    produced: list[DecisionMade] = []
    dead: list[Rejected] = []

    async def produce(events: Sequence[Any]) -> None:
        produced.extend(events)

    async def park(rejects: Sequence[Rejected]) -> None:
        dead.extend(rejects)

    engine = BatchEngine(
        ExposureJudge(TOPICS, KEYS, TTL),
        store,
        log=logging.getLogger("tests.exposures"),
        dead_letter=park,
        outputs=produce,
        outputs_first=True,
        cache_bytes=0,
    )
    return Judged(store, engine, produced, dead)


def exposure(unit: str = "visitor-1", exposure_id: str = "x-1", **fields: Any) -> bytes:
    body = {
        "experiment_id": EXP,
        "unit_id": unit,
        "arm_id": RULE.choose(unit).arm_id,
        "allocation_version": VERSION,
        "exposure_id": exposure_id,
        "ts": 1_776_189_612.5,
        **fields,
    }
    return orjson.dumps(body)


async def test_a_valid_record_becomes_its_decision_and_is_marked_with_the_rest_ttl() -> None:
    j = judged()
    report = await j.handle(exposure())
    assert report.exposures_accepted == 1
    [event] = j.produced
    chosen = RULE.choose("visitor-1")
    assert (event.decision_id, event.arm_id) == (chosen.decision_id, chosen.arm_id)
    assert event.propensity == chosen.propensity
    assert event.event_id == exposure_event_id(EXP, "x-1")
    assert event.assignment == "local"
    mark = KEYS.exposure(EXP, "x-1")
    assert j.store.strings[mark] == b"1"
    assert j.store.expire_at[mark] == int(NOW) + TTL
    assert j.store.hashes[KEYS.exposure_offsets(EXP)] == {f"{TOPICS.exposures}:0": 0}
    assert j.dead == []


async def test_an_exposure_already_marked_over_rest_is_a_duplicate_and_not_produced() -> None:
    j = judged()
    j.store.strings[KEYS.exposure(EXP, "x-1")] = b"1"  # the route's SET NX
    report = await j.handle(exposure(), exposure("visitor-2", "x-2"))
    assert (report.exposures_accepted, report.exposures_duplicate) == (1, 1)
    assert [e.exposure_id for e in j.produced] == ["x-2"]


async def test_the_same_exposure_twice_in_a_batch_or_in_a_later_one_is_produced_once() -> None:
    j = judged()
    report = await j.handle(exposure(), exposure())
    assert (report.exposures_accepted, report.exposures_duplicate) == (1, 1)
    later = await j.handle(exposure(), first=2)
    assert (later.exposures_accepted, later.exposures_duplicate) == (0, 1)
    assert len(j.produced) == 1


async def test_a_redelivered_batch_is_dropped_by_the_offsets_stored_with_the_marks() -> None:
    j = judged()
    await j.handle(exposure(), exposure("visitor-2", "x-2"))
    again = await j.handle(exposure(), exposure("visitor-2", "x-2"))
    assert again.redelivered == 2
    assert len(j.produced) == 2


async def test_a_crash_between_produce_and_write_produces_identical_events_again() -> None:
    j = judged()

    class Crash(RuntimeError):
        pass

    async def write_fails(*args: Any, **kwargs: Any) -> list[str]:
        raise Crash

    original = j.store.write
    j.store.write = write_fails  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await j.handle(exposure())
    assert len(j.produced) == 1  # produced before the (failed) write
    assert KEYS.exposure(EXP, "x-1") not in j.store.strings
    j.store.write = original  # type: ignore[method-assign]
    await j.handle(exposure())  # the batch is retried from the log
    first, second = j.produced
    assert first == second
    assert j.store.strings[KEYS.exposure(EXP, "x-1")] == b"1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", Rejection.BAD_JSON),
        (b"[1, 2]", Rejection.NOT_AN_OBJECT),
        (None, Rejection.EMPTY),
        (orjson.dumps({"experiment_id": EXP, "unit_id": "u"}), Rejection.MISSING_FIELD),
        (exposure(allocation_version="7"), Rejection.WRONG_TYPE),
        (exposure(colour="red"), Rejection.UNKNOWN_FIELD),
        (exposure(arm_id="tab\there"), Rejection.BAD_ID),
        (exposure(exposure_id="has space"), Rejection.INVALID),
        (exposure(arm_id="purple"), Rejection.UNKNOWN_ARM),
        (exposure(allocation_version=VERSION - 1), Rejection.UNKNOWN_ALLOCATION),
        (
            exposure(arm_id=next(a for a in ARMS if a != RULE.choose("visitor-1").arm_id)),
            Rejection.ARM_NOT_ASSIGNED,
        ),
    ],
)
async def test_each_bad_record_is_dead_lettered_with_its_reason_and_the_rest_kept(
    value: bytes | None, reason: Rejection
) -> None:
    j = judged()
    report = await j.handle(value, exposure("visitor-2", "x-2"))
    assert [r.reason for r in j.dead] == [reason]
    assert j.dead[0].record.offset == 0
    assert j.dead[0].detail
    assert report.rejected == {reason: 1}
    assert [e.exposure_id for e in j.produced] == ["x-2"]


async def test_records_of_an_unknown_experiment_are_refused_and_nothing_is_written() -> None:
    j = judged(with_experiment=False)
    await j.handle(exposure())
    assert [r.reason for r in j.dead] == [Rejection.UNKNOWN_EXPERIMENT]
    assert j.produced == []
    assert KEYS.exposure_offsets(EXP) not in j.store.hashes


async def test_an_unreadable_stored_allocation_refuses_its_exposures() -> None:
    j = judged()
    j.store.strings[KEYS.allocation(EXP, VERSION)] = b'{"version": "garbage"}'
    await j.handle(exposure())
    assert [r.reason for r in j.dead] == [Rejection.UNKNOWN_ALLOCATION]
    assert j.produced == []

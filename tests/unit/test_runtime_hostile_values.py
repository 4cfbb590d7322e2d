"""No record value makes the record pipeline raise anything but a ``DecodeError``.

A record whose bytes make a processor raise an unexpected exception is a poison pill:
the batch is retried from the same offset forever (the live reward consumer only
survives Kafka/Redis/OS errors) and ``POST /reward`` answers 500. One such record was a
``decision_id`` ending in a superscript two, which ``str.isdigit()`` let through to
``int()``. These properties feed valid-looking reward and decision records with fields
replaced by hostile values (any unicode text, extreme and tiny floats, huge ints, wrong
types, missing fields, extreme attribution windows) through every pure step a record
takes: decoding, the consumer's fold (and its snapshot round trip, change points and
default rewards), the projector, and the decider's reward validation and errors.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Sequence
from typing import Any, Final

import orjson
import pytest
from fastapi import HTTPException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bandit_core.adaptive import MAX_HALF_LIFE, MAX_WINDOW, MIN_HALF_LIFE, decayed, windowed
from bandit_core.fold import (
    DEFAULT_SOURCE,
    fold_batch,
    fold_into,
    rejection_text,
    reward_rejection,
)
from bandit_core.state import ExperimentState
from bandit_core.strategies.registry import STRATEGIES, params_for
from mab_client.models import RewardCreate
from schemas.codec import DecodeError, decode, decode_reward, encode
from schemas.events import MAX_ATTRIBUTION_WINDOW_S, AnyEvent, ExperimentConfig, RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.decider.errors import reward_rejected
from services.decider.routes.rewards import reward_event
from services.projector.processor import BucketProjection
from services.projector.projection import MAX_EXPIREAT, Retention
from services.reward_consumer.attribution import default_reward_event
from services.reward_consumer.processor import change_point_event
from stream_runtime.batch import decode_batch, decode_reward_or_decision
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.processor import Loaded
from stream_runtime.redis_store import write_args
from stream_runtime.state_store import Write
from tests.fixtures.events import config_of
from tests.unit.test_schemas_codec_fast_path import Raw, mutated, valid_decisions, valid_rewards
from tests.unit.test_schemas_codec_fast_path import to_bytes as _to_bytes

pytestmark = pytest.mark.unit

PROPERTY = settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

EXPERIMENT: Final = "exp"
ARMS: Final = ("a", "b", "c")
TOPICS: Final = TopicNames.with_prefix("")
RETENTION: Final = Retention(hour_s=90 * 86400, minute_s=2 * 86400)
NOW: Final = 1_700_000_000.0
HEX: Final = "0123456789abcdef" * 2
KEYS: Final = RedisKeys("t")
PROJECTION: Final = BucketProjection(TOPICS, KEYS, RETENTION)


def config_for(experiment_id: str) -> ExperimentConfig:
    return config_of(experiment_id, ARMS, ts=0.0, attribution_window_s=60.0, default_reward=0.25)


CONFIG: Final = config_for(EXPERIMENT)

# --------------------------------------------------------------------------- values

#: Digits, and things that look like digits, of other scripts and forms.
digit_like = st.characters(categories=["Nd", "No", "Nl"])
any_text = st.text(max_size=80)
long_text = st.one_of(
    st.text(min_size=60, max_size=130),
    st.sampled_from(["x" * 64, "x" * 65, "é" * 64, "\U0001f600" * 64, "x" * 120, "x" * 121]),
)
exotic_text = st.text(
    alphabet=st.characters(categories=["Nd", "No", "Nl", "Zs", "Cf", "Mn", "Lo", "So"]),
    max_size=70,
)
hostile_text = st.one_of(any_text, long_text, exotic_text)

#: Decision ids that are ours, nearly ours, or not at all.
decision_ids = st.one_of(
    st.builds(lambda i: f"{HEX}.{i}", st.integers(0, 2)),
    st.builds(lambda i: f"{HEX}.{i}", st.integers(3, 99999)),
    st.builds(lambda t: f"{HEX}.{t}", st.text(digit_like, min_size=1, max_size=5)),
    st.builds(lambda t: f"{HEX}{t}", hostile_text),
    st.builds(lambda t: f"{t}.1", st.text(min_size=32, max_size=32)),
    st.sampled_from(
        [
            f"{HEX}.\u00b2",
            f"{HEX}.\u0663",
            f"{HEX}.-1",
            f"{HEX}.+1",
            f"{HEX}. 1",
            f"{HEX}.1_0",
            f"{HEX}.0x1",
            f"{HEX}.1\n",
            f"{HEX.upper()}.0",
            f"0x{HEX[2:]}.0",
            f"{HEX}.00000",
            f"{HEX}.0000",
            f"{HEX}.9999",
        ]
    ),
    hostile_text,
)

FLOAT_EDGES: Final[list[Any]] = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-300,
    1 - 2**-53,
    1.0,
    1 + 2**-52,
    0.5,
    1e21,
    1e22,
    2.0**63,
    2.0**64,
    2.0**80,
    1e300,
    1e308,
    1.7976931348623157e308,
    -1.0,
    -1e308,
    1_700_000_000.123,
    float(2**53),
    Raw("1e400"),
    Raw("-1e400"),
    Raw("NaN"),
    Raw("Infinity"),
]
INT_EDGES: Final[list[Any]] = [
    0,
    1,
    -1,
    2**31,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    Raw("123456789012345678901234567890"),
    Raw("-123456789012345678901234567890"),
]
WRONG_TYPES: Final[list[Any]] = [None, True, False, "", "1", "0.5", [], [1.0], {}, {"a": 1}]

hostile_floats = st.one_of(
    st.sampled_from(FLOAT_EDGES),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.0, max_value=1.0),
)
hostile_numbers = st.one_of(hostile_floats, st.sampled_from(INT_EDGES), st.integers())
#: Timestamps: realistic ones (so windows, buckets and decay interact), then extremes.
timestamps = st.one_of(
    st.floats(min_value=NOW - 10_000, max_value=NOW + 10_000),
    st.integers(min_value=0, max_value=2**53),
    hostile_numbers,
)
windows = st.one_of(
    st.sampled_from(
        [
            5e-324,
            1e-300,
            0.001,
            1,
            60.0,
            MAX_ATTRIBUTION_WINDOW_S,
            MAX_ATTRIBUTION_WINDOW_S + 1e-9,
            MAX_ATTRIBUTION_WINDOW_S * 2,
            0,
            0.0,
            -0.0,
            -1.0,
        ]
    ),
    st.floats(min_value=0.0, max_value=MAX_ATTRIBUTION_WINDOW_S, exclude_min=True),
    hostile_numbers,
)
anything = st.one_of(
    hostile_text, hostile_numbers, st.sampled_from(WRONG_TYPES), st.sampled_from(FLOAT_EDGES)
)

FIELD_VALUES: Final[dict[str, st.SearchStrategy[Any]]] = {
    "event_id": st.one_of(hostile_text, st.sampled_from(["", "e", "x" * 64, "x" * 65])),
    "ts": timestamps,
    "schema_version": st.one_of(st.sampled_from([0, 1, 2, 1.0, True, -1, 2**63]), anything),
    "experiment_id": st.one_of(st.just(EXPERIMENT), st.sampled_from(["A" * 120, "é"]), anything),
    "arm_id": st.one_of(st.sampled_from(ARMS), st.sampled_from(["d", "A" * 120, "a\n"]), anything),
    "reward": st.one_of(st.sampled_from([0.0, 1.0, 0, 1]), hostile_numbers),
    "decision_id": st.one_of(decision_ids, st.none()),
    "source": st.one_of(st.just(DEFAULT_SOURCE), st.just("api"), hostile_text),
    "strategy": hostile_text,
    "strategy_params": st.one_of(
        st.dictionaries(hostile_text, anything, max_size=3), st.sampled_from(WRONG_TYPES)
    ),
    "propensity": st.one_of(st.sampled_from([1.0, 5e-324, 0.5, 1]), hostile_numbers),
    "config_version": hostile_numbers,
    "snapshot_version": hostile_numbers,
    "degraded": st.one_of(st.booleans(), anything),
    "attribution_window_s": st.one_of(windows, st.none()),
    "type": st.sampled_from(
        ["reward_observed", "decision_made", "change_point_detected", "", None, 1]
    ),
}
REWARD_OPTIONAL: Final = ("event_id", "ts", "schema_version", "decision_id", "source", "type")
DECISION_OPTIONAL: Final = (
    "schema_version",
    "strategy_params",
    "degraded",
    "attribution_window_s",
)


@st.composite
def rewards(draw: st.DrawFn) -> dict[str, Any]:
    """A reward for :data:`CONFIG`, usually valid, with any subset of optional keys."""
    arm = draw(st.integers(0, len(ARMS) - 1))
    record: dict[str, Any] = {
        "type": "reward_observed",
        "event_id": draw(st.one_of(st.builds(lambda n: f"e{n}", st.integers(0, 30)), any_text)),
        "ts": draw(timestamps),
        "schema_version": 1,
        "experiment_id": EXPERIMENT,
        "arm_id": ARMS[arm],
        "reward": draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))),
        "decision_id": draw(st.builds(lambda i: f"{HEX[:-2]}{i:02d}.{arm}", st.integers(0, 9))),
        "source": draw(st.sampled_from(["api", DEFAULT_SOURCE, "bulk"])),
    }
    for key in REWARD_OPTIONAL:
        if draw(st.integers(0, 4)) == 0:
            del record[key]
    return record


@st.composite
def decisions(draw: st.DrawFn) -> dict[str, Any]:
    """A decision of :data:`CONFIG`, usually valid, with any subset of optional keys."""
    arm = draw(st.integers(0, len(ARMS) - 1))
    record: dict[str, Any] = {
        "type": "decision_made",
        "event_id": draw(st.builds(lambda n: f"d{n}", st.integers(0, 30))),
        "ts": draw(timestamps),
        "schema_version": 1,
        "experiment_id": EXPERIMENT,
        "decision_id": draw(st.builds(lambda i: f"{HEX[:-2]}{i:02d}.{arm}", st.integers(0, 9))),
        "arm_id": ARMS[arm],
        "strategy": "thompson",
        "strategy_params": {},
        "propensity": draw(st.floats(0.0, 1.0, exclude_min=True)),
        "config_version": 1,
        "snapshot_version": draw(st.integers(0, 100)),
        "degraded": draw(st.booleans()),
        "attribution_window_s": draw(windows),
    }
    for key in DECISION_OPTIONAL:
        if draw(st.integers(0, 4)) == 0:
            del record[key]
    return record


@st.composite
def hostile(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """``base`` with zero to three fields replaced by (or added as) hostile values, or
    deleted."""
    record = dict(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(FIELD_VALUES)))
        if key in record and draw(st.integers(0, 5)) == 0:
            del record[key]
        else:
            record[key] = draw(st.one_of(FIELD_VALUES[key], anything))
    return record


records = st.one_of(hostile(rewards()), hostile(decisions()))
kafka_timestamps = st.sampled_from([-1, 0, 1, 1_700_000_000_000, 2**62, 2**63 - 1, -(2**62)])


# --------------------------------------------------------------------------- checks


def _literal(value: Any) -> Any:
    """``value`` with ints beyond 64 bits (which orjson cannot write) as raw literals."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else Raw(str(value))
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


def to_bytes(record: dict[str, Any]) -> bytes:
    return _to_bytes({k: _literal(v) for k, v in record.items()})


def kafka_record(topic: str, offset: int, raw: bytes, timestamp: int) -> KafkaRecord:
    return KafkaRecord(topic, 0, offset, timestamp, raw, EXPERIMENT.encode())


def decoded(raw: bytes, topic: str, offset: int = 0, timestamp: int = 0) -> AnyEvent | None:
    """The record's event as the consumer decodes it, or ``None`` (a ``DecodeError``).

    ``decode``, ``decode_reward`` and the projector's decoder must agree on it too."""
    record = kafka_record(topic, offset, raw, timestamp)
    try:
        event = decode_reward_or_decision(record, TOPICS.rewards, TOPICS.decisions)
    except DecodeError:
        event = None
    batch = decode_batch([record], PROJECTION.decoders)
    if event is None:
        # Rejected as a DecodeError, not by the catch-all for unexpected decoder errors.
        assert [r.detail.startswith("decoder error") for r in batch.rejected] == [False]
        assert not batch.groups
    else:
        assert not batch.rejected
        # (a decision without event_id or ts gets pydantic's random/clock defaults)
        [other] = batch.groups[event.experiment_id].events
        volatile = {"event_id", "ts"}
        assert other.model_dump(exclude=volatile) == event.model_dump(exclude=volatile)
    for fn in (decode, decode_reward):
        with contextlib.suppress(DecodeError):
            fn(raw)
    return event


def check_snapshot(state: ExperimentState) -> None:
    """The snapshot encodes, decodes to the same stats and re-encodes byte for byte."""
    raw = state.snapshot_bytes()
    back = ExperimentState.from_snapshot(raw, state.experiment_id)
    assert back.arms == state.arms
    assert back.snapshot_bytes() == raw
    assert (back.version, back.duplicates) == (state.version, state.duplicates)
    assert (back.pending_count, back.defaulted, back.late, back.untracked) == (
        state.pending_count,
        state.defaulted,
        state.late,
        state.untracked,
    )


def check_reads(state: ExperimentState, now: float) -> None:
    """What a decision reads of the folded stats: adaptive summaries and every strategy."""
    stats = state.stats_for(ARMS)
    for s in stats:
        decayed(s, MIN_HALF_LIFE, now)
        decayed(s, MAX_HALF_LIFE, now)
        windowed(s, MAX_WINDOW, now)
    for name, strategy in STRATEGIES.items():
        params = params_for(name, {"seed": 1})
        index = strategy.choose(ARMS, stats, params, random.Random(0), now)
        assert 0 <= index < len(ARMS)


def check_rejection(event: RewardObserved, config: ExperimentConfig) -> None:
    """``reward_rejection`` and the errors built from its reason never raise; the
    decider's answer is JSON it can send."""
    for cfg in (config, None):
        reason = reward_rejection(cfg, event)
        if reason is None:
            continue
        error = reward_rejected(reason, event, cfg)
        assert isinstance(error, HTTPException)
        orjson.dumps({"detail": error.detail})
        orjson.dumps(rejection_text(reason, event, cfg))


def check_decider(record: dict[str, Any]) -> None:
    """``POST /reward`` and ``POST /rewards``: the body model, the event, the rule."""
    body_fields = ("experiment_id", "arm_id", "reward", "decision_id", "event_id")
    body = {k: v for k, v in record.items() if k in body_fields}
    raw = to_bytes(body)
    try:
        from_json = RewardCreate.model_validate_json(raw)
    except ValidationError:
        from_json = None
    try:
        parsed = RewardCreate.model_validate(orjson.loads(raw))
    except (ValidationError, orjson.JSONDecodeError):
        parsed = None
    for item in (from_json, parsed):
        if item is None:
            continue
        event = reward_event(item)
        check_rejection(event, config_for(event.experiment_id))
        if reward_rejection(config_for(event.experiment_id), event) is None:
            encode(event)  # what the producer sends


def check_fold(state: ExperimentState, events: Sequence[AnyEvent]) -> ExperimentState:
    """Fold ``events`` (one experiment) in one go and in two chunks: same state; its
    snapshot round-trips, its change points and its expired windows become valid events."""
    result = fold_batch(state, events)
    half = len(events) // 2
    chunked = state.copy()
    first = fold_into(chunked, events[:half])
    second = fold_into(chunked, events[half:])
    assert chunked == result.state
    assert first.outcomes + second.outcomes == result.outcomes
    assert first.change_points + second.change_points == result.change_points
    check_snapshot(result.state)
    config = result.state.config or config_for(state.experiment_id)
    for cp in result.change_points:
        change_point_event(state.experiment_id, cp)
    for decision_id, deadline in result.state.pending.items():
        default = default_reward_event(config, decision_id, deadline)
        if default is not None:
            again = decode_reward(encode(default))
            assert again == default
    return result.state


INT64: Final = range(-(2**63), 2**63)


def check_projector_write(
    events: Sequence[AnyEvent], config: ExperimentConfig, seen: Sequence[str], now: float
) -> None:
    """The projector's write script arguments are ones Redis takes: every EXPIREAT time
    and HINCRBY increment a 64-bit integer (Redis refuses an EXPIREAT beyond
    ``MAX_EXPIREAT``), every ZADD score and prune cutoff a finite number."""
    k = KEYS.experiment(config.experiment_id)
    loaded = Loaded({}, {k.config: config.model_dump_json().encode()}, dict.fromkeys(seen, 0.0))
    applied = PROJECTION.apply(config.experiment_id, events, loaded, now)
    assert applied.changes is not None
    guard = PROJECTION.guard(config.experiment_id)
    w = Write(
        config.experiment_id, guard.offsets, {}, {}, guard.seen, applied.new_seen, applied.changes
    )
    _, args = write_args(w, now)
    table = orjson.loads(args[0])
    for _key, scores, cutoff in table["zadd"]:  # dedupe keys, then change points
        assert all(math.isfinite(float(score)) for score in scores.values())
        if cutoff != "":
            assert math.isfinite(float(cutoff))
    for _key, fields, expire_at in table["hincr"]:
        assert -(2**63) // 1000 <= int(expire_at) <= MAX_EXPIREAT
        assert all(int(n) in INT64 for n in fields[1::2])


def check_event(event: AnyEvent, raw: bytes, topic: str) -> None:
    config = config_for(event.experiment_id)
    state = ExperimentState(event.experiment_id, config=config)
    check_fold(state, [event])
    check_fold(ExperimentState(event.experiment_id), [event])  # no config yet
    batch = decode_batch([kafka_record(topic, 0, raw, 0)], PROJECTION.decoders)
    items = batch.groups[event.experiment_id].events
    check_projector_write(items, config, [], NOW)
    seen = ["e:e0", f"d:{HEX[:-2]}00.0"]
    check_projector_write(items, config, seen, event.ts)
    if isinstance(event, RewardObserved):
        check_rejection(event, config)


def topic_of(record: dict[str, Any]) -> str:
    return TOPICS.decisions if record.get("type") == "decision_made" else TOPICS.rewards


def check_record(record: dict[str, Any], timestamp: int = 0) -> None:
    raw = to_bytes(record)
    topic = topic_of(record)
    event = decoded(raw, topic, timestamp=timestamp)
    if event is not None:
        check_event(event, raw, topic)
    if topic == TOPICS.rewards:
        check_decider(record)


# --------------------------------------------------------------------------- properties

SUPERSCRIPT_TWO: Final = {
    "type": "reward_observed",
    "event_id": "e1",
    "ts": NOW,
    "experiment_id": EXPERIMENT,
    "arm_id": "c",
    "reward": 1.0,
    "decision_id": f"{HEX}.\u00b2",
}


#: A valid but absurd event time (~3e14 years): the arm's sliding-window epoch
#: ``int(ts // 64)`` exceeded 64 bits and orjson refused to write the snapshot, so the
#: consumer failed the batch on every retry.
FAR_FUTURE: Final = {
    "event_id": "e1",
    "ts": 1e22,
    "experiment_id": EXPERIMENT,
    "arm_id": "a",
    "reward": 1.0,
}


#: Beyond year ~292 million (and below FAR_FUTURE's snapshot overflow): the projector's
#: bucket expiry exceeded what Redis's EXPIREAT takes, so its write script failed on
#: every retry of the batch.
BEYOND_EXPIREAT: Final = {**FAR_FUTURE, "ts": 1e16}


@PROPERTY
@given(st.one_of(records, mutated(valid_rewards()), mutated(valid_decisions())), kafka_timestamps)
@example(SUPERSCRIPT_TWO, 0)
@example(FAR_FUTURE, 0)
@example(BEYOND_EXPIREAT, 0)
@example({**FAR_FUTURE, "ts": 1.7976931348623157e308}, 0)
@example({k: v for k, v in FAR_FUTURE.items() if k != "ts"}, 2**63 - 1)
def test_a_hostile_record_is_a_decode_error_or_folds(record: dict[str, Any], ts: int) -> None:
    check_record(record, ts)


@PROPERTY
@given(st.lists(st.tuples(records, kafka_timestamps), min_size=2, max_size=24))
def test_a_sequence_of_hostile_records_folds_into_one_state(
    items: list[tuple[dict[str, Any], int]],
) -> None:
    """Late and out-of-order times, the same decision twice, default rewards: one state."""
    events: list[AnyEvent] = []
    kafka_records: list[KafkaRecord] = []
    for offset, (record, timestamp) in enumerate(items):
        raw = to_bytes(record)
        event = decoded(raw, topic_of(record), offset, timestamp)
        if event is not None and event.experiment_id == EXPERIMENT:
            events.append(event)
            kafka_records.append(kafka_record(topic_of(record), offset, raw, timestamp))
    if not events:
        return
    batch = decode_batch(kafka_records, PROJECTION.decoders).groups[EXPERIMENT].events
    check_projector_write(batch, CONFIG, [], NOW)
    state = check_fold(ExperimentState(EXPERIMENT, config=CONFIG), events)
    # Close every open window with its default reward, then fold everything once more.
    defaults: list[AnyEvent] = [
        d
        for did, deadline in state.pending.items()
        if (d := default_reward_event(CONFIG, did, deadline)) is not None
    ]
    state = check_fold(state, [*defaults, *reversed(events)])
    for now in (NOW, max(e.ts for e in events), 0.0):
        check_reads(state, now)


@PROPERTY
@given(
    st.lists(st.sampled_from([0.0, 1.0]), min_size=8, max_size=40),
    st.lists(timestamps, min_size=1, max_size=40),
    records,
)
def test_change_points_with_hostile_times(
    values: list[float], times: list[Any], record: dict[str, Any]
) -> None:
    """Enough rewards on one arm for the change detector to run, at hostile times, then
    one hostile record."""
    events: list[AnyEvent] = []
    for i, value in enumerate(values):
        raw = to_bytes(
            {
                "event_id": f"cp{i}",
                "ts": times[i % len(times)],
                "experiment_id": EXPERIMENT,
                "arm_id": ARMS[i % 2],
                "reward": value,
            }
        )
        event = decoded(raw, TOPICS.rewards, i)
        if event is not None:
            events.append(event)
    tail = decoded(to_bytes(record), topic_of(record), len(values))
    if tail is not None and tail.experiment_id == EXPERIMENT:
        events.append(tail)
    if events:
        state = check_fold(ExperimentState(EXPERIMENT, config=CONFIG), events)
        check_reads(state, NOW)

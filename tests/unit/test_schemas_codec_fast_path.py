"""The codec's accept-only fast path agrees with the pydantic path on every input.

``decode``/``decode_reward`` try a hand-written fast path for ``reward_observed`` and
``decision_made`` before pydantic. It is only safe if it never accepts what pydantic
rejects and always builds the very model pydantic builds. These property tests feed
both valid records and near-valid mutations (wrong JSON types, bools, numeric strings,
NaN/inf spellings, huge and out-of-range numbers, extra/missing keys, bad ids, nulls,
old/new schema versions …) to the fast+fallback path and to the pure pydantic
reference (``_decode_slow``/``_decode_reward_slow``) and require identical outcomes:
an identical model (same class, field values *and* value types, field order,
``model_fields_set``) or a :class:`DecodeError` with the same reason and detail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec, fast_decode
from schemas.codec import DecodeError, decode, decode_reward, encode
from schemas.events import SCHEMA_VERSION, AnyEvent, DecisionMade, RewardObserved
from tests.fixtures.ids import STOREFRONT_IDS

pytestmark = pytest.mark.unit

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: Placeholder replaced by a raw JSON literal after encoding (for number spellings
#: that no Python value round-trips to, e.g. ``1e400`` or a 30-digit integer).
RAW = "\x00raw\x00"


class Raw:
    """A JSON literal to splice into the encoded record verbatim."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


# --------------------------------------------------------------------------- values

#: Printable text, as :func:`schemas.ids.normalize_id` accepts it (already trimmed).
printable_ids = (
    st.text(alphabet=st.characters(codec="utf-8").filter(str.isprintable), min_size=1, max_size=40)
    .map(str.strip)
    .filter(bool)
)
valid_ids = st.one_of(
    st.sampled_from(
        [
            "cta-button-test",
            "blue-button",
            "A",
            "a.b_c-d",
            "0",
            "x" * 120,
            *STOREFRONT_IDS,
            "a/b|c",
            "\uff21",  # fullwidth A
        ]
    ),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    printable_ids,
)
#: Ids pydantic refuses, and ids it accepts only after trimming (the fast path defers).
bad_ids = st.sampled_from(
    [
        "",
        " ",
        "a\n",
        "\na",
        " lead",
        "trail ",
        "\tboth\t",
        "x" * 121,
        " " + "x" * 120,
        "arm\u200b",
        "a\u00a0b",
        "a\x7f",
        "a\x00b",
    ]
)
short_strs = st.text(max_size=70)
event_ids = st.one_of(
    st.sampled_from(["e", "x" * 64, "rewards:0:123", "é" * 64]),
    st.text(min_size=1, max_size=64),
)
unit_floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 0.5, 5e-324, 1 - 2**-53]),
    st.floats(min_value=0.0, max_value=1.0),
)
#: Continuous rewards (order values): any finite amount up to the ceiling, which a record
#: may carry whatever its experiment (the experiment's rule is the fold's).
amounts = st.one_of(
    st.sampled_from([1.5, 42.5, 1e6, 1e6 - 2**-33, 1, 999_999]),
    st.floats(min_value=0.0, max_value=1e6),
)
timestamps = st.one_of(
    st.sampled_from([0.0, -0.0, 1_700_000_000.123, 1e308, 5e-324]),
    st.floats(min_value=0.0, allow_infinity=False, allow_nan=False),
    st.integers(min_value=0, max_value=2**53),
)
propensities = st.one_of(
    st.sampled_from([1.0, 5e-324, 0.37, 1]),
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
)
#: The integers the fast path takes (signed 64-bit; the valid records stay within it, the
#: mutations and edge values go beyond, where pydantic decides).
INT64_MAX = 2**63 - 1
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)

#: A reward's metric values: valid ones, and every way a producer gets them wrong.
metric_values = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["refund", "latency_ms", " refund ", "", "a\tb", "x" * 121]),
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70),
        max_size=3,
    ),
    st.sampled_from(
        [{}, {f"m{i}": 1 for i in range(21)}, {"refund": "1"}, {"refund": None}, [1], "m", 1]
    ),
)

user_contexts = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.sampled_from(
        [
            {},
            {f"k{i}": i for i in range(33)},
            {"blob": "x" * 2048},
            [1],
            "ctx",
            1,
            True,
            {"nested": {"deep": [1, {"x": None}]}},
        ]
    ),
)

#: Values that are wrong, or only lax-valid, for at least some field.
EDGE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    2,
    -1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.0,
    1.5,
    -0.5,
    1e6,
    1e6 + 1,
    1e308,
    -1e308,
    5e-324,
    "",
    "1",
    "0.5",
    " 0.5 ",
    "1e3",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "true",
    "false",
    "yes",
    "api",
    "reward_observed",
    "decision_made",
    "x" * 64,
    "x" * 65,
    "é" * 65,
    [],
    [1],
    {},
    {"a": 1},
    {"nested": {"deep": [1, {"x": None}]}},
    Raw("1e400"),
    Raw("-1e400"),
    Raw("123456789012345678901234567890"),
    Raw("-9223372036854775809"),
    Raw("18446744073709551616"),
    Raw("1E2"),
    Raw("1.0e0"),
    Raw("0e0"),
    Raw("-0"),
    "a\n",
    "has:colon",
    "x" * 120,
    "x" * 121,
    "é",
]
weird_values: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(EDGE_VALUES), bad_ids, valid_ids, json_values
)

_numbers = st.sampled_from(
    [
        *(True, False, 0, 1, 2, -1, 2**53 + 1, 2**64 - 1, "1", "0.5", "NaN", "inf", -0.0, 1.5),
        *(-5e-324, 1 + 2**-52, 1e6, 1e6 + 2**-32, 1e308, None, Raw("1e400")),
        Raw("123456789012345678901234567890"),
    ]
)
_lengths = st.sampled_from(["", "x" * 64, "x" * 65, "é" * 64, "é" * 65, None, 5, True])
#: Unit tokens: 32-hex digests, raw unit ids up to 200 characters, and near misses.
unit_tokens = st.one_of(
    st.sampled_from(["0123456789abcdef" * 2, "visitor-42", "u" * 200, "é" * 200, "a b"]),
    valid_ids,
)
_unit_edges: st.SearchStrategy[Any] = st.one_of(
    bad_ids,
    st.sampled_from(["u" * 201, " u", "u ", "a\tb", None, 1, True, [], {}, "x" * 120]),
)
#: Near misses per field, so each field's own edges are hit often.
FIELD_EDGES: dict[str, st.SearchStrategy[Any]] = {
    "experiment_id": st.one_of(bad_ids, st.sampled_from([None, 1, True, "x" * 120])),
    "arm_id": st.one_of(bad_ids, st.sampled_from([None, 1, True, "x" * 120])),
    "event_id": _lengths,
    "decision_id": _lengths,
    "source": _lengths,
    "strategy": _lengths,
    "ts": _numbers,
    "reward": _numbers,
    "propensity": _numbers,
    "config_version": _numbers,
    "snapshot_version": _numbers,
    "schema_version": _numbers,
    "degraded": st.sampled_from([0, 1, 2, 0.0, 1.0, "true", "false", "0", None, True, False]),
    "strategy_params": st.sampled_from([None, [], {}, "x", 1, [["a", 1]], {"a": {"b": None}}]),
    "user_context": user_contexts,
    "metrics": metric_values,
    "unit_id": _unit_edges,
    "assignment": st.sampled_from(
        ["sticky", "consistent", "local", "per_request", "Sticky", "", None, 1, True, ["sticky"]]
    ),
    "allocation_version": st.sampled_from(
        [0, 1, -1, 2**63, 2**64 - 1, 1.0, 0.5, "1", True, False, None, Raw("1e400")]
    ),
    "exposure_id": _lengths,
    "holdout": st.sampled_from([True, False, None, 1, 0, "true", 1.0, [True]]),
    "type": st.sampled_from(
        [
            "reward_observed",
            "decision_made",
            "experiment_created",
            "change_point_detected",
            "",
            None,
            1,
        ]
    ),
}

FIELD_EDGE_VALUES: list[Any] = [
    0.0,
    1.0,
    "true",
    "0",
    [["a", 1]],
    -5e-324,
    1 + 2**-52,
    "é" * 64,
    "é" * 65,
    "x" * 65,
]

#: The optional keys of each record and the values a valid record may give them.
REWARD_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.just(SCHEMA_VERSION),
    "decision_id": st.one_of(st.none(), event_ids),
    "source": st.text(max_size=64),
    "user_context": st.none(),  # a context proper is pydantic's (see below)
    "metrics": st.none(),  # metric values proper are pydantic's, like a context
    "unit_id": st.one_of(st.none(), unit_tokens),
}
DECISION_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.just(SCHEMA_VERSION),
    "strategy_params": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    "degraded": st.booleans(),
    # a unit decision (sticky, consistent or local); pydantic ties none of them together
    "unit_id": unit_tokens,
    "assignment": st.sampled_from(["sticky", "consistent", "local", None]),
    "allocation_version": st.one_of(st.none(), st.integers(0, INT64_MAX)),
    "exposure_id": event_ids,
    # a holdout decision (True) or the field written as null
    "holdout": st.sampled_from([True, None]),
}


def _with_optional(
    draw: st.DrawFn, record: dict[str, Any], optional: dict[str, st.SearchStrategy[Any]]
) -> dict[str, Any]:
    """``record`` plus any subset of the ``optional`` keys, in any key order: the fast
    path must accept what pydantic accepts whichever keys are present and in what order."""
    for key, values in optional.items():
        if draw(st.booleans()):
            record[key] = draw(values)
    order = draw(st.permutations(list(record)))
    return {k: record[k] for k in order}


def _event_fields(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """The fields every event record has (type, event id, time, experiment)."""
    return {
        "type": kind,
        "event_id": draw(event_ids),
        "ts": draw(timestamps),
        "experiment_id": draw(valid_ids),
    }


@st.composite
def valid_rewards(draw: st.DrawFn) -> dict[str, Any]:
    """A reward record the pydantic path accepts, with any subset of optional keys."""
    record: dict[str, Any] = {
        **_event_fields(draw, "reward_observed"),
        "arm_id": draw(valid_ids),
        "reward": draw(st.one_of(unit_floats, amounts, st.sampled_from([0, 1]))),
    }
    return _with_optional(draw, record, REWARD_OPTIONAL)


@st.composite
def valid_decisions(draw: st.DrawFn) -> dict[str, Any]:
    """A decision record the pydantic path accepts, with any subset of optional keys."""
    record: dict[str, Any] = {
        **_event_fields(draw, "decision_made"),
        "decision_id": draw(event_ids),
        "arm_id": draw(valid_ids),
        "strategy": draw(short_strs),
        "propensity": draw(propensities),
        "config_version": draw(st.integers(-(2**63), INT64_MAX)),
        "snapshot_version": draw(st.integers(-(2**63), INT64_MAX)),
    }
    return _with_optional(draw, record, DECISION_OPTIONAL)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid record with one to three near-miss mutations."""
    record = dict(draw(base))
    fields = [*record, *REWARD_OPTIONAL, *DECISION_OPTIONAL, "type"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "extra", "version"]))
        if kind == "set":
            key = draw(st.sampled_from(fields))
            record[key] = draw(st.one_of(FIELD_EDGES.get(key, weird_values), weird_values))
        elif kind == "delete" and record:
            del record[draw(st.sampled_from(sorted(record)))]
        elif kind == "extra":
            key = draw(st.sampled_from(["extra", "Event_id", "reward ", "config", "arm", ""]))
            record[key] = draw(weird_values)
        else:
            record["schema_version"] = draw(
                st.sampled_from([0, 2, -1, "1", 1.0, True, None, SCHEMA_VERSION])
            )
    return record


def to_bytes(record: dict[str, Any]) -> bytes:
    """Encode a record, splicing :class:`Raw` literals in verbatim."""
    literals: list[str] = []

    def default(value: object) -> str:
        if isinstance(value, Raw):
            literals.append(value.text)
            return RAW
        raise TypeError

    raw = orjson.dumps(record, default=default).decode()
    for text in literals:
        raw = raw.replace(orjson.dumps(RAW).decode(), text, 1)
    return raw.encode()


# --------------------------------------------------------------------------- oracle

Outcome = tuple[str, Any]


def outcome(fn: Callable[[], AnyEvent]) -> Outcome:
    try:
        return ("ok", fn())
    except DecodeError as exc:
        return ("error", (exc.reason, exc.detail))


def fingerprint(event: AnyEvent, *, ignore: frozenset[str] = frozenset()) -> Any:
    """Everything observable about a model instance, in order, with value types."""
    return (
        type(event),
        [(k, v, type(v)) for k, v in event.__dict__.items() if k not in ignore],
        event.model_fields_set,
        event.__pydantic_extra__,
        event.__pydantic_private__,
    )


def assert_same(fast: Outcome, slow: Outcome, *, ignore: frozenset[str] = frozenset()) -> None:
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "error":
        assert fast[1] == slow[1]
        return
    a, b = fast[1], slow[1]
    assert fingerprint(a, ignore=ignore) == fingerprint(b, ignore=ignore)
    if not ignore:
        assert a == b
        assert encode(a) == encode(b)
        assert repr(a) == repr(b)
        if isinstance(a, RewardObserved) and a.user_context is None and a.metrics is None:
            # a dict-valued context (or metrics) is unhashable, as params are
            assert hash(a) == hash(b)


def check_decode(record: dict[str, Any]) -> Outcome:
    raw = to_bytes(record)
    fast = outcome(lambda: decode(raw))
    slow = outcome(lambda: codec._decode_slow(raw))
    # Without event_id/ts pydantic's default factories make random/clock values.
    ignore = frozenset(k for k in ("event_id", "ts") if k not in record)
    assert_same(fast, slow, ignore=ignore)
    return fast


def check_decode_reward(
    record: dict[str, Any], fallback_event_id: str | None, fallback_ts: float | None
) -> Outcome:
    raw = to_bytes(record)
    fast = outcome(
        lambda: decode_reward(raw, fallback_event_id=fallback_event_id, fallback_ts=fallback_ts)
    )
    slow = outcome(
        lambda: codec._decode_reward_slow(
            raw, fallback_event_id=fallback_event_id, fallback_ts=fallback_ts
        )
    )
    ignore = frozenset(
        k
        for k, fallback in (("event_id", fallback_event_id), ("ts", fallback_ts))
        if k not in record and fallback is None
    )
    assert_same(fast, slow, ignore=ignore)
    return fast


fallback_ids = st.one_of(st.none(), st.just("rewards:3:12345"))
fallback_tss = st.one_of(st.none(), st.just(1_700_000_000.5), st.just(0.0))


# --------------------------------------------------------------------------- properties


def test_fast_path_is_enabled() -> None:
    """The models still have the shape the fast path was written for (else: update it)."""
    assert fast_decode.FAST_PATH_ENABLED


@PROPERTY
@given(valid_rewards())
def test_valid_rewards_take_the_fast_path_and_match(record: dict[str, Any]) -> None:
    assert fast_decode.fast_event(to_bytes(record)) is not None
    assert check_decode(record)[0] == "ok"


@PROPERTY
@given(valid_decisions())
def test_valid_decisions_take_the_fast_path_and_match(record: dict[str, Any]) -> None:
    assert fast_decode.fast_event(to_bytes(record)) is not None
    assert check_decode(record)[0] == "ok"


@PROPERTY
@given(mutated(valid_rewards()))
def test_mutated_rewards_decode_like_pydantic(record: dict[str, Any]) -> None:
    check_decode(record)


@PROPERTY
@given(mutated(valid_decisions()))
def test_mutated_decisions_decode_like_pydantic(record: dict[str, Any]) -> None:
    check_decode(record)


@PROPERTY
@given(
    st.one_of(valid_rewards(), mutated(valid_rewards()), mutated(valid_decisions())),
    st.sets(st.sampled_from(["type", "event_id", "ts"])),
    fallback_ids,
    fallback_tss,
)
def test_decode_reward_matches_pydantic(
    record: dict[str, Any],
    drop: set[str],
    fallback_event_id: str | None,
    fallback_ts: float | None,
) -> None:
    """The minimal producer contract: type/event_id/ts may be absent and filled in."""
    for key in drop:
        record.pop(key, None)
    check_decode_reward(record, fallback_event_id, fallback_ts)


@PROPERTY
@given(valid_rewards(), fallback_ids, fallback_tss)
def test_minimal_rewards_with_fallbacks_take_the_fast_path(
    record: dict[str, Any], fallback_event_id: str | None, fallback_ts: float | None
) -> None:
    minimal = {k: v for k, v in record.items() if k not in ("type", "event_id", "ts")}
    result = check_decode_reward(minimal, fallback_event_id, fallback_ts)
    assert result[0] == "ok"


# --------------------------------------------------------------------------- examples

REWARD = {
    "type": "reward_observed",
    "event_id": "e1",
    "ts": 1_700_000_000.5,
    "experiment_id": "cta-button-test",
    "arm_id": "blue-button",
    "reward": 0.5,
    "decision_id": "d1",
    "source": "api",
    "schema_version": SCHEMA_VERSION,
}
DECISION = {
    "type": "decision_made",
    "event_id": "e1",
    "ts": 1_700_000_000.5,
    "experiment_id": "cta-button-test",
    "decision_id": "d1",
    "arm_id": "blue-button",
    "strategy": "thompson",
    "strategy_params": {"seed": 42},
    "propensity": 0.37,
    "config_version": 3,
    "snapshot_version": 12,
    "degraded": False,
    "schema_version": SCHEMA_VERSION,
}
UNIT_REWARD = {**REWARD, "unit_id": "0123456789abcdef" * 2}
UNIT_DECISION = {
    **DECISION,
    "unit_id": "visitor-42",
    "assignment": "local",
    "allocation_version": 29_000_000,
    "exposure_id": "ex-1",
}
HOLDOUT_DECISION = {**DECISION, "decision_id": "0123456789abcdef" * 2 + ".0h", "holdout": True}


@pytest.mark.parametrize(
    "base",
    [REWARD, DECISION, UNIT_REWARD, UNIT_DECISION, HOLDOUT_DECISION],
    ids=["reward", "decision", "unit-reward", "unit-decision", "holdout-decision"],
)
def test_every_single_edge_value_in_every_field_decodes_like_pydantic(
    base: dict[str, Any],
) -> None:
    """Deterministic grid: each edge value in each field (and deleted), one at a time."""
    keys = list(dict.fromkeys([*UNIT_REWARD, *UNIT_DECISION, "holdout", "extra"]))
    for key in keys:
        record = {k: v for k, v in base.items() if k != key}
        check_decode(record)
        check_decode_reward(record, "rewards:0:1", 1.0)
        for value in [*EDGE_VALUES, *FIELD_EDGE_VALUES]:
            record = {**base, key: value}
            check_decode(record)
            check_decode_reward(record, None, None)


def test_fast_models_are_frozen_and_behave_like_validated_ones() -> None:
    raw = orjson.dumps(
        {
            "type": "decision_made",
            "event_id": "e1",
            "ts": 1_700_000_000,
            "experiment_id": "cta-button-test",
            "decision_id": "d1",
            "arm_id": "blue-button",
            "strategy": "thompson",
            "propensity": 1,
            "config_version": 3,
            "snapshot_version": 12,
        }
    )
    fast = decode(raw)
    slow = codec._decode_slow(raw)
    assert isinstance(fast, DecisionMade)
    assert fast == slow
    assert fast.ts == 1_700_000_000.0
    assert type(fast.ts) is float
    assert fast.propensity == 1.0
    assert type(fast.propensity) is float
    assert fast.strategy_params == {}
    assert fast.strategy_params is not slow.strategy_params
    with pytest.raises(ValueError):
        fast.arm_id = "other"  # type: ignore[misc]
    assert fast.model_copy(update={"degraded": True}).degraded is True
    assert fast.model_fields_set == slow.model_fields_set
    assert DecisionMade.model_validate(fast.model_dump()) == fast


def test_unit_decisions_take_the_fast_path_and_absent_fields_stay_unwritten() -> None:
    """A unit decision is accepted by the fast path; re-encoding writes its unit fields,
    and a decision without them is written without them (the pre-unit record)."""
    fast = fast_decode.fast_event(orjson.dumps(UNIT_DECISION))
    assert isinstance(fast, DecisionMade)
    assert (fast.unit_id, fast.assignment, fast.allocation_version, fast.exposure_id) == (
        "visitor-42",
        "local",
        29_000_000,
        "ex-1",
    )
    assert orjson.loads(encode(fast)) == {**UNIT_DECISION, "attribution_window_s": None}
    plain = fast_decode.fast_event(orjson.dumps(DECISION))
    assert plain is not None
    written = orjson.loads(encode(plain))
    assert not {"unit_id", "assignment", "allocation_version", "exposure_id", "holdout"} & set(
        written
    )
    reward = fast_decode.fast_event(orjson.dumps(UNIT_REWARD))
    assert isinstance(reward, RewardObserved)
    assert reward.unit_id == UNIT_REWARD["unit_id"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"reward": True}, None),  # lax-valid: pydantic accepts, the fast path defers
        ({"reward": "1"}, None),
        ({"reward": 1e6 + 1}, "reward_out_of_range"),  # above REWARD_CEILING
        ({"reward": -0.5}, "reward_out_of_range"),
        ({"schema_version": True}, "bad_schema_version"),
        ({"schema_version": 2}, "unknown_schema_version"),
        ({"arm_id": "a\tb"}, "bad_id"),
        ({"arm_id": " a "}, None),  # valid once trimmed: pydantic trims it
        ({"experiment_id": ""}, "bad_id"),
        ({"user_context": {"segment": "new"}}, None),
        ({"user_context": [1]}, "bad_user_context"),
        ({"user_context": {f"k{i}": i for i in range(33)}}, "bad_user_context"),
        ({"extra": 1}, "unknown_field"),
        ({"type": "decision_made"}, "missing_field"),
        ({"unit_id": "u" * 201}, "bad_id"),
        ({"unit_id": " visitor "}, None),  # valid once trimmed: pydantic trims it
        ({"unit_id": 42}, "wrong_type"),
        ({"metrics": {"refund": 1, "latency_ms": 180.5}}, None),
        ({"metrics": {"refund": "1"}}, None),  # lax-valid, like a reward of "1"
        ({"metrics": {"refund": "x"}}, "wrong_type"),
        ({"metrics": {"": 1}}, "bad_id"),
        ({"metrics": {f"m{i}": 1 for i in range(21)}}, "invalid"),
        ({"metrics": [1]}, "wrong_type"),
    ],
)
def test_examples_defer_to_pydantic(change: dict[str, Any], reason: str | None) -> None:
    record = {
        "type": "reward_observed",
        "event_id": "e1",
        "ts": 1.0,
        "experiment_id": "x",
        "arm_id": "a",
        "reward": 0.5,
        **change,
    }
    assert fast_decode.fast_event(orjson.dumps(record)) is None
    result = check_decode(record)
    assert result[0] == ("ok" if reason is None else "error")
    if reason is not None:
        assert result[1][0] == reason


def test_a_reward_without_metrics_is_written_as_before_and_null_metrics_stay_fast() -> None:
    """``metrics`` is left out of a record without it (byte-identical to older records);
    an explicit null is taken by the fast path exactly as pydantic takes it."""
    plain = RewardObserved(event_id="e1", ts=1.0, experiment_id="x", arm_id="a", reward=1.0)
    assert b"metrics" not in encode(plain)
    record = {"event_id": "e1", "ts": 1.0, "experiment_id": "x", "arm_id": "a", "reward": 1.0}
    fast = fast_decode.fast_reward(orjson.dumps({**record, "metrics": None}))
    assert fast is not None
    assert fast.metrics is None
    assert check_decode_reward({**record, "metrics": None}, None, None)[0] == "ok"
    with_metrics = check_decode_reward({**record, "metrics": {"refund": 1}}, None, None)
    assert with_metrics[0] == "ok"
    assert isinstance(with_metrics[1], RewardObserved)
    assert with_metrics[1].metrics == {"refund": 1.0}


def test_holdout_decisions_take_the_fast_path_and_keep_their_mark() -> None:
    """A holdout decision's ``holdout: true`` survives the fast path and re-encoding; a
    bandit decision is written without the field (its pre-holdout bytes)."""
    fast = fast_decode.fast_event(orjson.dumps(HOLDOUT_DECISION))
    assert isinstance(fast, DecisionMade)
    assert fast.holdout is True
    assert fast == codec._decode_slow(orjson.dumps(HOLDOUT_DECISION))
    assert orjson.loads(encode(fast)) == {**HOLDOUT_DECISION, "attribution_window_s": None}
    assert fast_decode.fast_event(orjson.dumps({**DECISION, "holdout": False})) is None

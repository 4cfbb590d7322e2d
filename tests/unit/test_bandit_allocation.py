"""Allocation math: the traffic floor, epochs, and the stored record's encoding."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_core.allocation import (
    AllocationError,
    AllocationRecord,
    apply_floor,
    normalized,
    seconds_left,
    valid_until,
    version_at,
)

pytestmark = pytest.mark.unit


def test_floor_formula_on_an_example() -> None:
    # w' = f + (1 - k f) w with k = 3, f = 0.1: 0.1 + 0.7 w
    assert apply_floor([0.0, 0.25, 0.75], 0.1) == pytest.approx([0.1, 0.275, 0.625])


def test_zero_floor_returns_the_weights_unchanged() -> None:
    weights = [0.2, 0.8]
    out = apply_floor(weights, 0.0)
    assert out == weights
    assert out is not weights


def test_full_floor_is_uniform() -> None:
    assert apply_floor([1.0, 0.0, 0.0, 0.0], 0.25) == [0.25] * 4
    assert apply_floor([0.0, 1.0, 0.0], 1 / 3) == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("f", [-0.01, 0.51, math.nan, math.inf])
def test_a_floor_that_does_not_fit_is_refused(f: float) -> None:
    with pytest.raises(AllocationError, match="min_arm_share"):
        apply_floor([0.5, 0.5], f)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=50).filter(
        lambda ws: sum(ws) > 0
    ),
    share=st.floats(0.0, 1.0),
)
def test_floored_weights_are_probabilities_with_every_arm_at_the_floor(
    raw: list[float], share: float
) -> None:
    k = len(raw)
    f = share / k  # any floor that fits
    weights = apply_floor(normalized(raw), f)
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-9)
    assert all(w >= f - 1e-15 for w in weights)
    # The order of the bandit's preference is kept.
    base = normalized(raw)
    for i in range(k):
        for j in range(k):
            if base[i] < base[j]:
                assert weights[i] <= weights[j]


def test_normalized_refuses_what_cannot_be_a_distribution() -> None:
    assert normalized([1.0, 3.0]) == [0.25, 0.75]
    for bad in ([], [0.0, 0.0], [-0.1, 1.1], [math.nan, 1.0], [math.inf, 1.0]):
        with pytest.raises(AllocationError):
            normalized(bad)


def test_epochs() -> None:
    assert version_at(0.0, 60) == 0
    assert version_at(59.999, 60) == 0
    assert version_at(60.0, 60) == 1
    assert version_at(1_776_189_659.5, 60) == 29_603_160
    assert valid_until(29_603_160, 60) == 1_776_189_660
    assert seconds_left(29_603_160, 60, 1_776_189_600.0) == 60
    assert seconds_left(29_603_160, 60, 1_776_189_659.2) == 0  # rounded down, never past
    assert seconds_left(29_603_160, 60, 1_776_190_000.0) == 0
    for bad_ts in (-1.0, math.nan, math.inf):
        with pytest.raises(AllocationError):
            version_at(bad_ts, 60)
    with pytest.raises(AllocationError):
        version_at(10.0, 0)


@settings(max_examples=200, deadline=None)
@given(ts=st.floats(0.0, 4e9), interval=st.integers(5, 3600))
def test_a_version_is_current_from_its_start_until_valid_until(ts: float, interval: int) -> None:
    v = version_at(ts, interval)
    assert v * interval <= ts < valid_until(v, interval)
    assert version_at(float(valid_until(v, interval)), interval) == v + 1


def _record(**change: object) -> AllocationRecord:
    fields: dict[str, object] = {
        "version": 29_603_160,
        "arm_ids": ("blue-button", "Free Shipping", "a:b{c}"),
        "weights": (0.1, 1 / 3, 1 - 0.1 - 1 / 3),
        "min_arm_share": 0.1,
        "computed_at": 1_776_189_600.123456,
    }
    return AllocationRecord(**{**fields, **change})  # type: ignore[arg-type]


def test_record_round_trips_bit_for_bit() -> None:
    record = _record()
    raw = record.encode()
    back = AllocationRecord.decode(raw)
    assert back == record
    assert back.weights == record.weights  # exact floats, not approximations
    assert AllocationRecord.decode(raw.decode()) == record
    assert b" " not in raw.replace(b"Free Shipping", b"")  # compact
    assert orjson.loads(raw)["arm_ids"] == list(record.arm_ids)
    assert record.weight_of("Free Shipping") == 1 / 3
    assert record.weight_of("ghost") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"version":1,"arm_ids":["a"],"weights":[1.0],"min_arm_share":0}',
        b'{"version":"1","arm_ids":["a"],"weights":[1.0],"min_arm_share":0,"computed_at":1}',
        b'{"version":1,"arm_ids":["a"],"weights":[true],"min_arm_share":0,"computed_at":1}',
        b'{"version":1,"arm_ids":[1],"weights":[1.0],"min_arm_share":0,"computed_at":1}',
        b'{"version":1,"arm_ids":["a","b"],"weights":[1.0],"min_arm_share":0,"computed_at":1}',
        b'{"version":-1,"arm_ids":["a"],"weights":[1.0],"min_arm_share":0,"computed_at":1}',
        b'{"version":1,"arm_ids":["a"],"weights":[1.5],"min_arm_share":0,"computed_at":1}',
        b'{"version":1,"arm_ids":[],"weights":[],"min_arm_share":0,"computed_at":1}',
    ],
)
def test_anything_else_is_not_a_record(raw: bytes) -> None:
    with pytest.raises(AllocationError):
        AllocationRecord.decode(raw)

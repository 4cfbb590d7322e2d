"""The assignment rule (``mab_client.assignment``): the shared test vectors, the checks on
units and allocations, and the two statistical promises of the spec measured on 100,000
units: each arm gets its weight's share, and re-weighting moves no more units than the
P-MinHash bound (exactly the total-variation change for two arms)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mab_client import Allocation, InvalidAllocationError, InvalidUnitIdError, LocalDecision
from mab_client.assignment import (
    ALGORITHM,
    arm_uniforms,
    assignment_digest,
    decision_id_of,
    normalize_unit_id,
    race,
    uniform_of,
    unit_token,
)
from tests.fixtures.reweighting import pminhash_bound
from tests.fixtures.reweighting import total_variation as tv

pytestmark = pytest.mark.unit

ROOT: Final = Path(__file__).resolve().parents[2]
SPEC_DIR: Final = ROOT / "clients" / "spec"
VECTORS_FILE: Final = SPEC_DIR / "assignment-vectors.json"
VECTORS: Final[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
ASSIGNMENT: Final[list[dict[str, Any]]] = VECTORS["assignment"]
UNITS: Final = 100_000


def allocation_of(v: dict[str, Any], storage: str = "hashed") -> Allocation:
    n = len(v["weights"])
    return Allocation(
        experiment_id="vectors",
        version=v["version"],
        arm_ids=tuple(f"arm-{i}" for i in range(n)),
        weights=tuple(v["weights"]),
        salt=v["salt"],
        unit_id_storage="raw" if storage == "raw" else "hashed",
    )


# --- The shared vectors --------------------------------------------------------------


def test_the_vectors_cover_what_the_spec_promises_to_cover() -> None:
    assert VECTORS["algorithm"] == ALGORITHM
    assert len(ASSIGNMENT) >= 60
    arm_counts = {len(v["weights"]) for v in ASSIGNMENT}
    assert {2, 3, 5, 17, 1000} <= arm_counts
    assert any(0.0 in v["weights"] for v in ASSIGNMENT)
    assert any(1.0 in v["weights"] for v in ASSIGNMENT)
    assert any("near tie" in v["name"] for v in ASSIGNMENT)
    ids = [v["unit_id"] for v in ASSIGNMENT]
    assert any(not u.isascii() for u in ids)
    assert any(any(ord(c) > 0xFFFF for c in u) for u in ids)  # emoji, beyond the BMP
    assert any(" " in u.strip() for u in ids)
    assert any(u != u.strip() for u in ids)
    assert len({v["salt"] for v in ASSIGNMENT}) >= 3
    assert any(v["version"] >= 2**32 for v in ASSIGNMENT)  # the decision id's wrap-around
    # Both outcomes occur among the two-arm vectors: a rule stuck on one arm fails.
    assert {v["arm_index"] for v in ASSIGNMENT if len(v["weights"]) == 2} == {0, 1}


@pytest.mark.parametrize(
    "v", ASSIGNMENT, ids=[f"{i}:{v['name']}" for i, v in enumerate(ASSIGNMENT)]
)
def test_the_sdk_passes_each_assignment_vector(v: dict[str, Any]) -> None:
    assert normalize_unit_id(v["unit_id"]) == v["normalized_unit_id"]
    digest = assignment_digest(v["unit_id"], v["salt"])
    assert digest.hex() == v["digest"]
    uniforms = arm_uniforms(digest, len(v["weights"]))
    if "uniforms" in v:
        assert uniforms == v["uniforms"]
    assert race(uniforms, v["weights"]) == (v["arm_index"], v["propensity"])
    assert decision_id_of(digest, v["version"], v["arm_index"]) == v["decision_id"]
    assert unit_token(v["unit_id"], v["salt"], "hashed") == v["token_hashed"]
    assert unit_token(v["unit_id"], v["salt"], "raw") == v["token_raw"]

    alloc = allocation_of(v)
    assert alloc.choose(v["unit_id"]) == LocalDecision(
        arm_id=f"arm-{v['arm_index']}",
        arm_index=v["arm_index"],
        decision_id=v["decision_id"],
        propensity=v["propensity"],
        version=v["version"],
    )
    assert alloc.digest(v["unit_id"]).hex() == v["digest"]
    assert alloc.unit_token(v["unit_id"]) == v["token_hashed"]
    assert allocation_of(v, "raw").unit_token(v["unit_id"]) == v["token_raw"]


@pytest.mark.parametrize("v", VECTORS["race"], ids=[v["name"] for v in VECTORS["race"]])
def test_the_sdk_passes_each_race_vector(v: dict[str, Any]) -> None:
    uniforms = [uniform_of(int(w, 16)) for w in v["words"]]
    assert uniforms == v["uniforms"]
    assert race(uniforms, v["weights"]) == (v["arm_index"], v["weights"][v["arm_index"]])


@pytest.mark.parametrize(
    "v", VECTORS["invalid_unit_ids"], ids=[v["why"] for v in VECTORS["invalid_unit_ids"]]
)
def test_each_invalid_unit_id_is_refused_everywhere(v: dict[str, str]) -> None:
    alloc = Allocation("e", 1, ("a", "b"), (0.5, 0.5), salt="s")
    calls: list[Callable[[], object]] = [
        lambda: normalize_unit_id(v["unit_id"]),
        lambda: alloc.choose(v["unit_id"]),
        lambda: alloc.unit_token(v["unit_id"]),
        lambda: alloc.digest(v["unit_id"]),
        lambda: unit_token(v["unit_id"], "s", "raw"),
        lambda: assignment_digest(v["unit_id"], "s"),
    ]
    for call in calls:
        with pytest.raises(InvalidUnitIdError, match="unit_id"):
            call()


def test_the_specs_worked_example_is_the_first_vector() -> None:
    """The numbers a reader follows by hand in docs/assignment-spec.md are the file's."""
    spec = (ROOT / "docs" / "assignment-spec.md").read_text(encoding="utf-8")
    v = ASSIGNMENT[0]
    assert v["name"] == "worked example (docs/assignment-spec.md)"
    digest = bytes.fromhex(v["digest"])
    scores = [-math.log(u) / w for u, w in zip(v["uniforms"], v["weights"], strict=True)]
    expected = [
        v["digest"],
        v["decision_id"],
        v["token_hashed"],
        hashlib.sha256(digest + (1).to_bytes(4, "big")).hexdigest(),
        *(digest[8 * i : 8 * i + 8].hex() for i in range(3)),
        *(repr(u) for u in v["uniforms"]),
        *(repr(s) for s in scores),
        f"Winner: arm {v['arm_index']}",
    ]
    missing = [text for text in expected if text not in spec]
    assert missing == []


def test_regenerating_the_vectors_gives_the_checked_in_file(tmp_path: Path) -> None:
    out = tmp_path / "vectors.json"
    done = subprocess.run(
        [sys.executable, str(SPEC_DIR / "generate_vectors.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == VECTORS_FILE.read_bytes()


# --- Unit ids, tokens and errors -----------------------------------------------------


def test_unit_ids_are_trimmed_so_padding_does_not_make_another_unit() -> None:
    alloc = Allocation("e", 3, ("a", "b", "c"), (0.2, 0.3, 0.5), salt="s")
    assert alloc.choose("  v-1\n") == alloc.choose("v-1")
    assert alloc.unit_token("\tv-1 ") == alloc.unit_token("v-1")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "must not be empty"),
        ("x" * 201, "has 201 characters after trimming; at most 200 are allowed"),
        ("a\x1bb", r"U\+001B"),
        (b"bytes", "must be a string, got bytes"),
        (42, "must be a string, got int"),
        (None, "must be a string, got NoneType"),
    ],
)
def test_a_bad_unit_id_gets_an_error_naming_the_rule(bad: Any, message: str) -> None:
    alloc = Allocation("e", 3, ("a", "b"), (0.5, 0.5), salt="s")
    with pytest.raises(InvalidUnitIdError, match=message):
        alloc.choose(bad)
    with pytest.raises(InvalidUnitIdError, match=message):
        normalize_unit_id(bad)


def test_200_characters_is_the_longest_unit_id() -> None:
    assert normalize_unit_id(" " + "é" * 200 + " ") == "é" * 200


def test_the_token_is_a_salted_pseudonym_and_not_the_assignment_digest() -> None:
    a = unit_token("visitor-1", "salt-a")
    assert len(a) == 32
    assert set(a) <= set("0123456789abcdef")
    assert a != unit_token("visitor-1", "salt-b")
    assert a != unit_token("visitor-2", "salt-a")
    assert not assignment_digest("visitor-1", "salt-a").hex().startswith(a)
    with pytest.raises(InvalidAllocationError, match="unit_id_storage"):
        unit_token("visitor-1", "salt-a", "plain")  # type: ignore[arg-type]


GOOD: Final[dict[str, Any]] = {
    "experiment_id": "e",
    "version": 5,
    "arm_ids": ("a", "b", "c"),
    "weights": (0.2, 0.3, 0.5),
    "salt": "0123456789abcdef",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": (0.5, 0.5)}, "3 arm ids for 2 weights"),
        ({"weights": (0.5, 0.6, -0.1)}, "weight 2 must be finite and >= 0"),
        ({"weights": (0.5, math.nan, 0.5)}, "weight 1 must be finite"),
        ({"weights": (0.5, math.inf, 0.5)}, "weight 1 must be finite"),
        ({"weights": (0.0, 0.0, 0.0)}, "at least one weight must be positive"),
        ({"weights": (0.2, 0.3, 0.6)}, "must sum to 1"),
        ({"weights": ()}, "at least one arm"),
        ({"arm_ids": ("a", "a", "c")}, "distinct"),
        ({"version": -1}, "version must be an integer >= 0"),
        ({"version": 1.5}, "version must be an integer >= 0"),
        ({"version": True}, "version must be an integer >= 0"),
        ({"salt": ""}, "salt must be"),
        ({"salt": "tab\there"}, "salt must be"),
        ({"unit_id_storage": "clear"}, "unit_id_storage"),
        ({"min_arm_share": 0.5}, "min_arm_share"),
        ({"min_arm_share": -0.1}, "min_arm_share"),
        (
            {"arm_ids": tuple(str(i) for i in range(10_001)), "weights": (1 / 10_001,) * 10_001},
            "at most 10000 arms",
        ),
    ],
)
def test_an_unusable_allocation_is_refused_when_built(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidAllocationError, match=message):
        Allocation(**(GOOD | change))


def test_an_allocation_is_immutable_and_keeps_what_it_was_given() -> None:
    alloc = Allocation(**(GOOD | {"weights": [0.2, 0.3, 0.5], "min_arm_share": 0.1}))
    assert alloc.weights == (0.2, 0.3, 0.5)  # a list is kept as a tuple
    assert alloc.min_arm_share == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        alloc.version = 6  # type: ignore[misc]
    assert alloc == Allocation(**(GOOD | {"min_arm_share": 0.1}))


# --- The fast path is the rule -------------------------------------------------------

unit_texts = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs")),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() != "" and s.strip().isprintable())

salts = unit_texts.filter(str.isprintable)


@st.composite
def allocations(draw: st.DrawFn) -> Allocation:
    k = draw(st.integers(1, 40))
    raw = draw(
        st.lists(st.sampled_from([0.0, 0.0, 1e-9, 0.1, 1.0, 2.5, 7.0]), min_size=k, max_size=k)
    )
    if not any(raw):
        raw[draw(st.integers(0, k - 1))] = 1.0
    total = math.fsum(raw)
    return Allocation(
        experiment_id="p",
        version=draw(st.integers(0, 2**40)),
        arm_ids=tuple(f"a{i}" for i in range(k)),
        weights=tuple(w / total for w in raw),
        salt=draw(salts),
    )


@settings(max_examples=300, deadline=None)
@given(alloc=allocations(), unit_id=unit_texts)
def test_choose_is_the_composition_of_the_spec_steps(alloc: Allocation, unit_id: str) -> None:
    digest = assignment_digest(unit_id, alloc.salt)
    index, weight = race(arm_uniforms(digest, len(alloc.arm_ids)), alloc.weights)
    assert alloc.weights[index] > 0
    assert alloc.choose(unit_id) == (
        alloc.arm_ids[index],
        index,
        decision_id_of(digest, alloc.version, index),
        weight,
        alloc.version,
    )


@pytest.mark.parametrize("arms", [2, 6])
def test_choose_computes_the_scores_bit_for_bit_as_the_spec_on_ulp_level_ties(arms: int) -> None:
    """Weights solved so that two arms' scores tie to the last bit or nearly: only the
    exact float steps of the spec (``u`` built with ``| 1``, ``-ln(u) / w`` as a division)
    give the spec's winner for every unit. Arms 0 and ``arms - 1`` race (the second one in
    another hash block when ``arms > 4``); the others have weight 0."""
    disagreements = []
    for n in range(3000):
        unit = f"tie-{n}"
        digest = assignment_digest(unit, "s")
        us = arm_uniforms(digest, arms)
        a, b = -math.log(us[0]), -math.log(us[-1])
        weights = [0.0] * arms
        weights[0], weights[-1] = a / (a + b), b / (a + b)
        alloc = Allocation("e", 1, tuple(f"a{i}" for i in range(arms)), tuple(weights), salt="s")
        expected = race(us, weights)[0]
        if alloc.choose(unit).arm_index != expected:
            disagreements.append(unit)
    assert disagreements == []


def test_the_decision_id_has_the_shape_of_every_decision_id_and_is_stable() -> None:
    alloc = Allocation("e", 2**32 + 7, ("a", "b"), (0.5, 0.5), salt="s")
    d = alloc.choose("visitor")
    assert d.decision_id[24:32] == "00000007"
    assert d.decision_id.endswith(f".{d.arm_index}")
    assert len(d.decision_id.split(".")[0]) == 32
    assert alloc.choose("visitor") == d
    later = dataclasses.replace(alloc, version=2**32 + 8).choose("visitor")
    assert later.decision_id[:24] == d.decision_id[:24]
    assert later.decision_id != d.decision_id


def test_an_appended_arm_takes_units_only_for_itself() -> None:
    """Uniforms are by position and the race is scale-free: with the old arms' weights
    scaled down together, a unit either keeps its arm or moves to the new one."""
    ids = [f"u{i}" for i in range(20_000)]
    before = Allocation("e", 1, ("a", "b", "c"), (0.2, 0.3, 0.5), salt="s")
    after = Allocation("e", 2, ("a", "b", "c", "d"), (0.15, 0.225, 0.375, 0.25), salt="s")
    moves = [(before.choose(u).arm_index, after.choose(u).arm_index) for u in ids]
    assert all(new in (old, 3) for old, new in moves)
    moved = sum(new == 3 for _, new in moves) / len(ids)
    assert abs(moved - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(ids))


# --- The statistical promises, on 100,000 units ---------------------------------------


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square with ``df`` degrees of freedom (closed forms for integer
    df: a Poisson tail for even df, erfc plus a half-integer series for odd df)."""
    half = x / 2
    if df % 2 == 0:
        return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(df // 2))
    tail = sum(
        math.exp((i - 0.5) * math.log(half) - half - math.lgamma(i + 0.5))
        for i in range(1, (df + 1) // 2)
    )
    return math.erfc(math.sqrt(half)) + tail


def test_chi2_sf_matches_known_quantiles() -> None:
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-4)
    assert chi2_sf(5.991, 2) == pytest.approx(0.05, abs=1e-4)
    assert chi2_sf(16.266, 3) == pytest.approx(0.001, abs=1e-5)
    assert chi2_sf(27.877, 9) == pytest.approx(0.001, abs=1e-5)


def arm_counts(alloc: Allocation, ids: list[str]) -> tuple[list[int], list[int]]:
    arms = [alloc.choose(u).arm_index for u in ids]
    counts = [0] * len(alloc.arm_ids)
    for a in arms:
        counts[a] += 1
    return arms, counts


def assert_shares_match(alloc: Allocation, counts: list[int]) -> float:
    n = sum(counts)
    live = [(c, w) for c, w in zip(counts, alloc.weights, strict=True) if w > 0]
    assert all(c == 0 for c, w in zip(counts, alloc.weights, strict=True) if w == 0)
    chi2 = sum((c - n * w) ** 2 / (n * w) for c, w in live)
    p = chi2_sf(chi2, len(live) - 1) if len(live) > 1 else 1.0
    assert p > 1e-4, (alloc.weights, counts, chi2)
    return p


SHIFTS: Final[list[tuple[tuple[float, ...], tuple[float, ...]]]] = [
    ((0.5, 0.5), (0.6, 0.4)),
    ((0.5, 0.5), (0.9, 0.1)),
    ((0.1, 0.9), (0.12, 0.88)),
    ((0.3, 0.7), (0.7, 0.3)),
    ((1 / 3, 1 / 3, 1 / 3), (0.5, 0.3, 0.2)),
    ((0.2, 0.3, 0.5), (0.5, 0.3, 0.2)),
    ((0.6, 0.3, 0.1), (0.55, 0.35, 0.1)),
    ((0.25, 0.25, 0.25, 0.25), (0.7, 0.1, 0.1, 0.1)),
    ((0.2,) * 5, (0.05, 0.1, 0.15, 0.3, 0.4)),
    ((0.5, 0.5, 0.0), (0.4, 0.4, 0.2)),  # a new arm starts receiving traffic
]


@pytest.mark.parametrize(("w", "v"), SHIFTS, ids=[f"{w}->{v}" for w, v in SHIFTS])
def test_units_moved_by_a_reweighting_are_the_pminhash_bound_and_shares_follow_weights(
    w: tuple[float, ...], v: tuple[float, ...]
) -> None:
    """Expected moved fraction = 1 - J_P exactly (the race is P-MinHash), so the measured
    fraction must sit within 4 standard errors of the bound, on both sides; for two arms
    the bound is the total-variation distance itself."""
    ids = [f"unit-{i}" for i in range(UNITS)]
    arms = tuple(f"arm-{i}" for i in range(len(w)))
    before = Allocation("move", 1, arms, w, salt="c0ffee0123456789")
    after = Allocation("move", 2, arms, v, salt="c0ffee0123456789")
    old, counts_before = arm_counts(before, ids)
    new, counts_after = arm_counts(after, ids)
    assert_shares_match(before, counts_before)
    assert_shares_match(after, counts_after)

    moved = sum(a != b for a, b in zip(old, new, strict=True)) / UNITS
    bound = pminhash_bound(w, v)
    sigma = math.sqrt(bound * (1 - bound) / UNITS)
    assert moved <= bound + 4 * sigma, (moved, bound, tv(w, v))
    assert moved >= bound - 4 * sigma, (moved, bound, tv(w, v))  # it is P-MinHash, not less
    assert bound >= tv(w, v) - 1e-12  # no rule moves fewer than TV
    if len(w) == 2:
        assert bound == pytest.approx(tv(w, v), abs=1e-12)

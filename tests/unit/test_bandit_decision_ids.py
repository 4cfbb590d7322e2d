"""Decision ids name their arm: ``<32 hex>.<arm index>``, and nothing else parses as one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit_core.decision_ids import arm_index_of, make_decision_id

pytestmark = pytest.mark.unit

HEX = "0123456789abcdef" * 2


@pytest.mark.parametrize("index", [0, 1, 7, 42, 9999])
def test_an_issued_id_names_its_arm(index: int) -> None:
    assert arm_index_of(make_decision_id(index)) == index


def test_upper_case_hex_is_still_ours() -> None:
    assert arm_index_of(HEX.upper() + ".3") == 3


@pytest.mark.parametrize(
    "decision_id",
    [
        "",
        "not-ours",
        HEX,  # no arm index
        HEX + ".",
        HEX + ".12345",  # more than four digits
        HEX + ".1\n",
        HEX[:-1] + ".1",  # 31 hex digits
        HEX + "0.1",  # 33
        HEX[:-1] + "g.1",
        "0x" + HEX[2:] + ".1",  # int(head, 16) took these five
        " " + HEX[1:] + ".1",
        HEX[:-1] + " .1",
        "a_" + HEX[2:] + ".1",
        "-" + HEX[1:] + ".1",
        HEX + ".\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit() and int() took it
        HEX + ".\u00b2",  # SUPERSCRIPT TWO: isdigit() took it, then int() raised
        HEX + ".+1",
    ],
)
def test_anything_else_is_not_ours(decision_id: str) -> None:
    assert arm_index_of(decision_id) is None


@given(st.text(max_size=64))
def test_never_raises_on_any_text(decision_id: str) -> None:
    """Rewards come from any producer: a bad id is a rejection, never an exception."""
    index = arm_index_of(decision_id)
    if index is not None:
        head, _, tail = decision_id.partition(".")
        assert len(head) == 32
        assert int(head, 16) >= 0
        assert tail.isascii()
        assert int(tail) == index

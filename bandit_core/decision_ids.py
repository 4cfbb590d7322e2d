"""Decision ids that name their arm.

A decision id is ``<32 hex random>.<arm index>``. Arms are append-only and keep their
insertion order, so the index is stable forever; any component (API, consumer, replay)
can therefore reject a reward whose arm differs from its decision's without a lookup
or a per-decision write on the hot path.
"""

from __future__ import annotations

from schemas.ids import random_hex


def make_decision_id(arm_index: int) -> str:
    return f"{random_hex()}.{arm_index}"


def arm_index_of(decision_id: str) -> int | None:
    """The arm index a decision id names, or ``None`` when it is not one of ours."""
    head, sep, tail = decision_id.rpartition(".")
    if not sep or len(head) != 32 or not tail.isdigit() or len(tail) > 4:
        return None
    try:
        int(head, 16)
    except ValueError:
        return None
    return int(tail)

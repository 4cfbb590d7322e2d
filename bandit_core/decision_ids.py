"""Decision ids that name their arm.

A decision id is ``<32 hex random>.<arm index>``. Arms are append-only and keep their
insertion order, so the index is stable forever; any component (API, consumer, replay)
can therefore reject a reward whose arm differs from its decision's without a lookup
or a per-decision write on the hot path.
"""

from __future__ import annotations

import re
from typing import Final

from schemas.ids import random_hex

#: ``[0-9]`` rather than ``\d`` or ``str.isdigit``: those also take other scripts'
#: digits ("٣", and "²", which ``int`` then refuses), and ``int(head, 16)`` took a sign,
#: spaces, underscores and a ``0x`` prefix; none of those ids was issued by us.
_DECISION_ID: Final = re.compile(r"[0-9a-fA-F]{32}\.([0-9]{1,4})(h?)")
#: The suffix of a holdout decision's id.
HOLDOUT_MARK: Final = "h"


def make_decision_id(arm_index: int) -> str:
    return f"{random_hex()}.{arm_index}"


def holdout_decision_id(decision_id: str) -> str:
    """The id of ``decision_id`` served by the holdout (the mark appended)."""
    return decision_id + HOLDOUT_MARK


def is_holdout_id(decision_id: str) -> bool:
    """Whether a decision id (one of ours: :func:`arm_index_of` is not ``None``) names
    a holdout decision."""
    return decision_id.endswith(HOLDOUT_MARK)


def arm_index_of(decision_id: str) -> int | None:
    """The arm index a decision id names, or ``None`` when it is not one of ours (never
    an exception: the id comes from whoever produced the reward)."""
    match = _DECISION_ID.fullmatch(decision_id)
    return None if match is None else int(match[1])

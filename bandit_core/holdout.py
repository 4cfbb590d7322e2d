"""The holdout: a share of traffic served the control arm whatever the bandit says.

Every team that adopts a bandit is asked what the bandit itself earned. The holdout
answers it: with probability ``h`` (``holdout_share``) a visitor gets the control arm,
otherwise the bandit's choice, so the control is served with probability
``h + (1 - h) p_c`` and any other arm with ``(1 - h) p_i`` (:func:`with_holdout`): the
*true* propensities, which the decisions log (off-policy evaluation divides by them).
The holdout's visitors are a uniform random sample served a fixed arm, the bandit's
the rest; comparing the two per visitor is the bandit's uplift
(:mod:`bandit_core.uplift`).

Who is held out: per request, a draw of the decider's generator; per unit, a hash of
the unit that is *independent of the assignment hash* (another prefix,
:data:`HOLDOUT_PREFIX`), so a unit stays in (or out of) the holdout for the experiment's
life, whatever allocation version it meets, and being held out says nothing about the
arm the bandit would have drawn for it (docs/assignment.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

#: The holdout hash's domain prefix: ``sha256(HOLDOUT_PREFIX + salt + "\\0" + unit id)``.
HOLDOUT_PREFIX: Final = b"mab-holdout-v1\0"
_TWO_POW_M64: Final = 2.0**-64


def holdout_uniform(unit_id: str, salt: str) -> float:
    """The unit's holdout draw in ``[0, 1)``: the first 8 bytes of
    ``sha256("mab-holdout-v1\\0" + salt + "\\0" + unit id)``, big-endian, over 2**64.
    ``unit_id`` is the normalised (trimmed) id, as the assignment hash takes it."""
    digest = hashlib.sha256(HOLDOUT_PREFIX + salt.encode() + b"\0" + unit_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") * _TWO_POW_M64


def unit_held_out(unit_id: str, salt: str, share: float) -> bool:
    """Whether the unit is in the holdout (``share`` of units, by :func:`holdout_uniform`)."""
    return share > 0.0 and holdout_uniform(unit_id, salt) < share


def with_holdout(propensities: Sequence[float], share: float, control: int) -> list[float]:
    """The served propensities with the holdout: ``h + (1 - h) p_c`` for the control,
    ``(1 - h) p_i`` for the others (a copy when ``share`` is 0)."""
    if share <= 0.0:
        return list(propensities)
    kept = 1.0 - share
    out = [kept * p for p in propensities]
    out[control] += share
    return out


def without_holdout(weights: Sequence[float], share: float, control: int) -> list[float]:
    """The bandit's own weights from weights that include the holdout (the inverse of
    :func:`with_holdout`, clipped at 0 against rounding): what a unit outside the
    holdout is drawn from."""
    if share <= 0.0:
        return list(weights)
    out = list(weights)
    out[control] = max(0.0, out[control] - share)
    total = sum(out)
    return [w / total for w in out]

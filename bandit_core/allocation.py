"""Allocations: the weights the bandit wants now, versioned by epoch (pure, no I/O).

An *allocation* is the share of new units each arm should get, after the traffic floor.
It is what the sticky and consistent modes draw a unit's arm from, and what an SDK
deciding locally fetches (``GET /experiments/{id}/allocation``). Every decider worker
and every SDK must use *exactly* the same weights for a version, or one unit could be
assigned two arms and a logged propensity would be wrong. So a version is not computed
per process: the first worker that needs it stores it (``SET NX``, the decider's
``services/decider/allocations.py``) and everyone reads that record.

Versions are epochs of the experiment's ``allocation_interval_s``: ``version =
floor(ts / interval)``, so any process knows the current version from its clock alone,
without asking anyone, and the record says when it stops being current
(:func:`valid_until`). A change of the interval changes the version numbers' scale; the
two scales cannot collide within an allocation's retention (a version under the longer
interval is about half a version under the shorter one at the same time).

The traffic floor (:func:`apply_floor`): with ``min_arm_share = f`` and ``k`` arms,
``w'_i = f + (1 - k f) w_i``. Every arm keeps at least ``f``; the rest follows the
bandit. ``k f <= 1`` is the experiment config's own check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from schemas.events import FLOOR_SLACK, MAX_ALLOCATION_INTERVAL_S

#: How long a stored version stays readable (``MAB_ALLOCATION_RETENTION_S``), and so how
#: long an exposure naming it is accepted and its mark kept: the decider (which stores
#: versions and answers ``POST /exposures``) and the reward consumer (which judges the
#: exposures topic) read the same variable within these bounds. At least two of the
#: longest intervals: a version that expired while still current would be stored again
#: with other weights.
DEFAULT_RETENTION_S: Final = 86_400
MIN_RETENTION_S: Final = 2 * MAX_ALLOCATION_INTERVAL_S
MAX_RETENTION_S: Final = 30 * 86_400


class AllocationError(ValueError):
    """Weights, a floor, an epoch or a stored record that cannot be an allocation."""


def normalized(weights: Sequence[float]) -> list[float]:
    """``weights`` scaled to sum to 1. Propensities estimated by Monte Carlo sum to 1
    only up to rounding; an allocation's weights are probabilities, so they must."""
    if not weights:
        raise AllocationError("an allocation needs at least one arm")
    total = 0.0
    for w in weights:
        if not math.isfinite(w) or w < 0.0:
            raise AllocationError(f"weights must be finite and non-negative, got {w!r}")
        total += w
    if total <= 0.0:
        raise AllocationError("weights must not all be zero")
    return [w / total for w in weights]


def apply_floor(weights: Sequence[float], f: float) -> list[float]:
    """The weights after the traffic floor ``f``: ``f + (1 - k f) * w_i`` for ``k`` arms.

    ``weights`` should sum to 1 (:func:`normalized`); the result then does too. With
    ``f == 0`` the weights are returned as they are (a copy), at no cost.
    """
    k = len(weights)
    if not math.isfinite(f) or f < 0.0 or k * f > 1.0 + FLOOR_SLACK:
        raise AllocationError(
            f"min_arm_share {f!r} does not fit {k} arms (needs 0 <= arms x share <= 1)"
        )
    if f == 0.0:
        return list(weights)
    rest = max(0.0, 1.0 - k * f)  # the slack may leave a hair below zero
    return [f + rest * w for w in weights]


def _check_interval(interval_s: int) -> None:
    if interval_s <= 0:
        raise AllocationError(f"allocation interval must be positive, got {interval_s!r}")


def version_at(ts: float, interval_s: int) -> int:
    """The allocation version (epoch) current at unix time ``ts``."""
    _check_interval(interval_s)
    if not math.isfinite(ts) or ts < 0.0:
        raise AllocationError(f"ts must be a finite, non-negative unix time, got {ts!r}")
    return int(ts // interval_s)


def valid_until(version: int, interval_s: int) -> int:
    """When ``version`` stops being current (unix seconds): the next epoch's start."""
    _check_interval(interval_s)
    return (version + 1) * interval_s


def seconds_left(version: int, interval_s: int, now: float) -> int:
    """Whole seconds until ``version`` expires at ``now`` (``Cache-Control: max-age``),
    rounded down so that a cache never keeps it past its end; 0 once it has ended."""
    return max(0, math.floor(valid_until(version, interval_s) - now))


@dataclass(frozen=True, slots=True)
class AllocationRecord:
    """One stored allocation version: the weights every worker and SDK use for it.

    ``arm_ids`` are the experiment's arms when it was computed (arms are append-only,
    so an arm's position never changes; arms added later are not in it and cannot be
    assigned under it). ``weights`` align with ``arm_ids`` and already include the
    floor ``min_arm_share``. ``computed_at``: unix time of the first writer.
    """

    version: int
    arm_ids: tuple[str, ...]
    weights: tuple[float, ...]
    min_arm_share: float
    computed_at: float

    def __post_init__(self) -> None:
        if len(self.arm_ids) != len(self.weights) or not self.arm_ids:
            raise AllocationError(
                f"{len(self.arm_ids)} arms but {len(self.weights)} weights in version "
                f"{self.version}"
            )
        if self.version < 0:
            raise AllocationError(f"allocation version must be >= 0, got {self.version}")
        for w in self.weights:
            if not (math.isfinite(w) and 0.0 <= w <= 1.0):
                raise AllocationError(f"weights must be in [0, 1], got {w!r}")

    def weight_of(self, arm_id: str) -> float | None:
        """The weight of ``arm_id`` in this version; ``None``: not one of its arms."""
        try:
            return self.weights[self.arm_ids.index(arm_id)]
        except ValueError:
            return None

    def encode(self) -> bytes:
        """Compact JSON (the Redis value). Floats are written with full precision, so
        the weights read back are bit-identical to the ones the writer used."""
        return orjson.dumps(
            {
                "version": self.version,
                "arm_ids": self.arm_ids,
                "weights": self.weights,
                "min_arm_share": self.min_arm_share,
                "computed_at": self.computed_at,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> AllocationRecord:
        """Inverse of :meth:`encode`; :class:`AllocationError` for anything else."""
        try:
            obj: Any = orjson.loads(raw)
            record = cls(
                version=_int(obj["version"]),
                arm_ids=tuple(_str(a) for a in obj["arm_ids"]),
                weights=tuple(_float(w) for w in obj["weights"]),
                min_arm_share=_float(obj["min_arm_share"]),
                computed_at=_float(obj["computed_at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise AllocationError(f"not an allocation record: {exc!r}") from None
        return record


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _float(value: Any) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {value!r}")
    return value

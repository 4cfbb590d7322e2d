"""The sticky table as a projection of the decisions topic, for ``mab replay``.

The decider stores a sticky unit's assignment (:class:`~services.decider.units.
Assignment`) before it logs the unit's one ``DecisionMade`` (``assignment ==
"sticky"``), so the table is a function of the log: each such event is a row whose key
is the unit's token under the experiment and whose value is the decision id, propensity
and allocation version the event carries, assigned at the event's time. This processor
turns the events into those rows; replay writes them with ``SET NX`` and the remaining
TTL (a live key is never replaced: the decider's first write wins) or compares them with
the live keys (:mod:`stream_runtime.replay`).

Why a projection of its own rather than keys in the experiment's namespace: a million
units cannot ride in the namespace's one ``MULTI`` swap, and the table has a live writer
(every decider worker) that replay must never overwrite. The rows therefore go out as
side outputs (:class:`~stream_runtime.processor.TableRow`), and the engine's offset
guard of this processor lives in replay's memory only, under names outside every
namespace (:meth:`StickyTable.guard`).

The TTL is the experiment's ``sticky_ttl_s`` in its final configuration, as replay folds
everything with the final configuration; the event's ``ts`` is taken just after the
decider's ``SET``, so a rebuilt key expires that much later than the original
(milliseconds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from bandit_core.decision_ids import arm_index_of
from schemas.events import AnyEvent, DecisionMade
from schemas.redis_keys import RedisKeys
from schemas.rejections import Rejection
from services.decider.units import Assignment
from stream_runtime.batch import BatchReport, Decoder, decode_decision_record
from stream_runtime.processor import (
    Applied,
    Changes,
    ExperimentProcessor,
    Guard,
    Loaded,
    Reads,
    Skip,
    TableRow,
    unknown_experiment,
)

log = logging.getLogger("services.decider.sticky_table")

#: How far a live value's assignment time may be from the event's and still be the same
#: assignment (``--verify``): the decider takes its ``now`` before the ``SET`` and the
#: event's ``ts`` after it, one Redis round trip apart (more under an overloaded loop).
ASSIGNED_TS_SLACK_S: Final = 60.0


@dataclass(slots=True)
class StickyTableReport(BatchReport):
    """What one batch did: rows projected, sticky decisions already expired at ``now``
    (no row), and decisions of other modes (no row either)."""

    rows: int = 0
    expired: int = 0
    not_sticky: int = 0


def row_value(event: DecisionMade) -> bytes | None:
    """The decider's stored value for a sticky ``DecisionMade`` (``None``: not one, or
    its decision id names no arm)."""
    if event.assignment != "sticky" or event.unit_id is None or event.allocation_version is None:
        return None
    index = arm_index_of(event.decision_id)
    if index is None:
        return None
    assigned = Assignment(
        index, event.decision_id, event.propensity, event.allocation_version, event.ts
    )
    return assigned.encode()


@dataclass
class StickyTable(ExperimentProcessor):
    """The sticky table's projection (see the module docstring).

    ``keys`` is the namespace the experiments' configs are read from (replay's scratch
    namespace, where it seeds them); ``table`` the prefix of the unit keys (the live one:
    the table is written in place, never swapped).
    """

    table: RedisKeys
    name: str = "sticky table"
    config_log = log

    @property
    def decoders(self) -> Mapping[str, Decoder]:
        return {self.topics.decisions: decode_decision_record}

    def guard(self, experiment_id: str) -> Guard:
        """Names in replay's memory only, never written to Redis: ``:`` never ends an
        encoded token, so ``mab:unit:{E}::offsets`` is no unit's key, and it lies outside
        every ``mab:{E}:`` namespace that replay writes and swaps."""
        base = self.table.unit_pattern(experiment_id).removesuffix("*")
        return Guard(base + ":offsets", base + ":seen")

    def new_report(self) -> StickyTableReport:
        return StickyTableReport()

    def plan(self, experiment_id: str, events: Sequence[AnyEvent]) -> Reads:
        return Reads(get=(self.keys.experiment(experiment_id).config,))

    def apply(
        self, experiment_id: str, events: Sequence[AnyEvent], loaded: Loaded, now: float
    ) -> Applied[StickyTableReport]:
        report = StickyTableReport()
        config = self.config(experiment_id, loaded)
        if config is None:
            return unknown_experiment(report, len(events))
        ttl = config.sticky_ttl_s
        rows: list[TableRow] = []
        skipped: list[Skip] = []
        for i, event in enumerate(events):
            if not isinstance(event, DecisionMade) or event.assignment != "sticky":
                report.not_sticky += 1
                continue
            value = row_value(event)
            if value is None:
                skipped.append(Skip(i, Rejection.BAD_DECISION_ID, event.decision_id))
                continue
            expires = None if ttl is None else event.ts + ttl
            if expires is not None and expires <= now:
                report.expired += 1
                continue
            assert event.unit_id is not None  # row_value checked it
            rows.append(TableRow(self.table.unit(experiment_id, event.unit_id), value, expires))
        report.rows = len(rows)
        return Applied(report, Changes(), skipped=skipped, outputs=list(rows))

    def same_row(self, live: bytes, rebuilt: bytes) -> bool:
        """The same assignment: decision id (so the arm), propensity and allocation
        version equal, assignment times within :data:`ASSIGNED_TS_SLACK_S`."""
        try:
            a, b = Assignment.decode(live), Assignment.decode(rebuilt)
        except ValueError:
            return False
        return (a.decision_id, a.propensity, a.version) == (
            b.decision_id,
            b.propensity,
            b.version,
        ) and abs(a.assigned_ts - b.assigned_ts) <= ASSIGNED_TS_SLACK_S

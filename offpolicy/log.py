"""One experiment's log as read from the topics, and the audit join of decisions and rewards.

The join is by ``decision_id``. Every decision becomes at least one row; every reward
becomes exactly one row:

* ``joined``: a decision and one reward naming it (a decision with two rewards, e.g. a
  retried POST, gives two rows; ``reward_outcome`` says which one the fold counted);
* ``decision``: a decision without any reward (reward columns empty);
* ``reward_unlinked``: a reward without ``decision_id``, as the original API sends it
  (decision columns empty): it still counts for the arm's statistics but cannot be
  attributed to a decision;
* ``reward_orphan``: a reward whose ``decision_id`` names no decision in the log (the
  decision event was lost, or the id is foreign).

Unlinked and orphan rewards are rows of the same table rather than a separate section,
so one file holds every event exactly once and a ``row_kind`` filter separates them.
``reward_outcome`` is what :func:`bandit_core.fold.fold_batch` does with the reward when
the log is folded in event-time order (:mod:`offpolicy.timeline`): ``applied``,
``duplicate`` or a rejection reason (``unknown_arm``, ``arm_mismatch``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

import orjson

from schemas.events import (
    ArmsAdded,
    DecisionMade,
    ExperimentCreated,
    RewardObserved,
    StrategyChanged,
)

ConfigEvent = ExperimentCreated | ArmsAdded | StrategyChanged
RowKind = Literal["joined", "decision", "reward_unlinked", "reward_orphan"]

#: Column order of every export (CSV header, Parquet schema).
COLUMNS: Final = (
    "row_kind",
    "decision_id",
    "decision_ts",
    "arm_id",
    "strategy",
    "strategy_params",
    "config_version",
    "propensity",
    "reward",
    "reward_ts",
    "source",
    "reward_event_id",
    "reward_outcome",
    "user_context",
)


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record of the experiment's partitions that could not be decoded (skipped, counted)."""

    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class ExperimentLog:
    """Everything the topics hold about one experiment, each topic in log order."""

    experiment_id: str
    config_events: tuple[ConfigEvent, ...] = ()
    decisions: tuple[DecisionMade, ...] = ()
    rewards: tuple[RewardObserved, ...] = ()
    rejected: tuple[RejectedRecord, ...] = ()
    #: Records of other experiments that share the partitions (skipped).
    other_experiments: int = 0
    #: Decision records whose ``decision_id`` was already read (skipped): the
    #: consistent mode logs a unit's every view under one id per allocation version,
    #: and an exposure may be reported twice. One decision is one sample.
    repeated_decisions: int = 0


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One row of ``mab audit export`` (see the module docstring for the kinds)."""

    row_kind: RowKind
    decision_id: str | None
    decision_ts: float | None
    arm_id: str
    strategy: str | None
    strategy_params: str | None
    config_version: int | None
    propensity: float | None
    reward: float | None
    reward_ts: float | None
    source: str | None
    reward_event_id: str | None
    reward_outcome: str | None
    #: The reward's ``user_context`` as compact JSON with sorted keys (empty: none).
    user_context: str | None = None

    def as_tuple(self) -> tuple[object, ...]:
        """Values in :data:`COLUMNS` order."""
        return (
            self.row_kind,
            self.decision_id,
            self.decision_ts,
            self.arm_id,
            self.strategy,
            self.strategy_params,
            self.config_version,
            self.propensity,
            self.reward,
            self.reward_ts,
            self.source,
            self.reward_event_id,
            self.reward_outcome,
            self.user_context,
        )


@dataclass(slots=True)
class Joined:
    """The join result: audit rows, and for each decision the rewards that name it."""

    rows: list[AuditRow] = field(default_factory=list)
    #: ``rewards_of[i]``: indices into ``log.rewards`` naming decision ``i``, in time order.
    rewards_of: list[list[int]] = field(default_factory=list)
    unlinked: int = 0
    orphans: int = 0


def _context(r: RewardObserved | None) -> str | None:
    if r is None or r.user_context is None:
        return None
    return orjson.dumps(r.user_context, option=orjson.OPT_SORT_KEYS).decode()


def _decision_row(
    d: DecisionMade, kind: RowKind, r: RewardObserved | None, outcome: str | None
) -> AuditRow:
    params = orjson.dumps(d.strategy_params, option=orjson.OPT_SORT_KEYS).decode()
    return AuditRow(
        row_kind=kind,
        decision_id=d.decision_id,
        decision_ts=d.ts,
        arm_id=d.arm_id,
        strategy=d.strategy,
        strategy_params=params,
        config_version=d.config_version,
        propensity=d.propensity,
        reward=None if r is None else r.reward,
        reward_ts=None if r is None else r.ts,
        source=None if r is None else r.source,
        reward_event_id=None if r is None else r.event_id,
        reward_outcome=outcome,
        user_context=_context(r),
    )


def _reward_row(r: RewardObserved, kind: RowKind, outcome: str | None) -> AuditRow:
    return AuditRow(
        row_kind=kind,
        decision_id=r.decision_id,
        decision_ts=None,
        arm_id=r.arm_id,
        strategy=None,
        strategy_params=None,
        config_version=None,
        propensity=None,
        reward=r.reward,
        reward_ts=r.ts,
        source=r.source,
        reward_event_id=r.event_id,
        reward_outcome=outcome,
        user_context=_context(r),
    )


def join(log: ExperimentLog, outcomes: list[str]) -> Joined:
    """Join decisions and rewards by decision id; rows sorted by time.

    ``outcomes[j]`` is the fold outcome of ``log.rewards[j]`` (from
    :func:`offpolicy.timeline.fold_timeline`). A decision id logged twice (it should not
    happen: ids are 128 random bits) joins its rewards to the first occurrence.
    Rows are ordered by decision time (rewards of a decision by their time), with
    unlinked and orphan rewards placed at their own time.
    """
    if len(outcomes) != len(log.rewards):
        raise ValueError(f"{len(outcomes)} outcomes for {len(log.rewards)} rewards")
    index: dict[str, int] = {}
    for i, d in enumerate(log.decisions):
        index.setdefault(d.decision_id, i)
    out = Joined(rewards_of=[[] for _ in log.decisions])
    loose: list[tuple[float, int, AuditRow]] = []
    for j, r in enumerate(log.rewards):
        target = None if r.decision_id is None else index.get(r.decision_id)
        if target is not None:
            out.rewards_of[target].append(j)
        elif r.decision_id is None:
            out.unlinked += 1
            loose.append((r.ts, j, _reward_row(r, "reward_unlinked", outcomes[j])))
        else:
            out.orphans += 1
            loose.append((r.ts, j, _reward_row(r, "reward_orphan", outcomes[j])))
    keyed: list[tuple[float, int, AuditRow]] = []
    for i, d in enumerate(log.decisions):
        mine = out.rewards_of[i]
        mine.sort(key=lambda j: (log.rewards[j].ts, j))
        if not mine:
            keyed.append((d.ts, -1, _decision_row(d, "decision", None, None)))
        for j in mine:
            keyed.append((d.ts, -1, _decision_row(d, "joined", log.rewards[j], outcomes[j])))
    # Stable: ties keep decisions before loose rewards and each group in its own order.
    merged = sorted(keyed + loose, key=lambda t: t[0])
    out.rows = [row for _, _, row in merged]
    return out

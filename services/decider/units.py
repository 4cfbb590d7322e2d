"""Which arm a unit gets on the server: the sticky table and the consistent mode.

A request with a ``unit_id`` is assigned by the experiment's ``assignment`` mode
(docs/assignment.md):

* ``consistent``: the arm is the assignment rule (:mod:`mab_client.assignment`) applied
  to the unit under the *stored* allocation of the current epoch
  (:class:`~services.decider.allocations.AllocationStore`), so every worker and every
  SDK computes the same arm without storing anything per unit. The decision id is the
  rule's, one per (unit, allocation version), and the propensity is the arm's weight.
* ``sticky``: a new unit is assigned exactly as in ``consistent`` mode, then the
  assignment is stored with ``SET key value NX GET EX ttl``: one round trip that either
  stores ours or returns the value another worker stored first, so two workers asked for
  a new unit at the same moment answer with one arm (Redis 7.0 allows ``NX`` with
  ``GET``). Only the winner logs a ``DecisionMade``; a returning unit gets the stored
  decision id, arm and propensity back and logs nothing.

Stored assignments never change until they expire, so each worker keeps the ones it saw
in a bounded LRU (:class:`StickyMemo`) whose entries expire with the unit's TTL: a
returning visitor costs one hash and a dict lookup, no Redis round trip.

The unit's *token* (the salted digest, or the raw id: the experiment's
``unit_id_storage``) is what the key and the events carry; the raw id is only hashed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from bandit_core.allocation import AllocationRecord
from mab_client.assignment import Allocation, LocalDecision
from schemas.events import ExperimentConfig
from schemas.redis_keys import RedisKeys
from services.decider.allocations import AllocationStore
from services.decider.decisions import CachedExperiment
from stream_runtime.redis_client import AnyRedis

#: Sticky assignments each worker remembers (about 200 bytes each in CPython, so the
#: default is ~20 MB): enough for the returning visitors of a busy storefront.
DEFAULT_MEMO_ENTRIES: Final = 100_000
#: Rule objects (salted hash state, per-arm decision id tails) kept per worker: one per
#: active experiment and current allocation version.
MAX_RULES: Final = 1024

#: Where a unit decision came from: ``new`` logs a DecisionMade; ``cached`` and
#: ``stored`` are a returning sticky unit (this worker's memory, or Redis).
UnitOutcome = Literal["new", "cached", "stored"]


@dataclass(frozen=True, slots=True)
class Assignment:
    """A unit's arm, its decision id and propensity, and when and from which allocation
    version it was assigned (for sticky units, their first request)."""

    arm_index: int
    decision_id: str
    propensity: float
    version: int
    assigned_ts: float

    def encode(self) -> bytes:
        """The sticky table's value: ``<decision id>|<propensity>|<version>|<ts>``
        (``repr`` of the floats: exact round trip)."""
        return (
            f"{self.decision_id}|{self.propensity!r}|{self.version}|{self.assigned_ts!r}".encode()
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Assignment:
        """Parse a stored value; :class:`ValueError` when it is not one."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        decision_id, propensity, version, ts = text.split("|")
        head, dot, index = decision_id.rpartition(".")
        if not dot or not index.isdigit() or not head:
            raise ValueError(f"not a stored assignment: {text!r}")
        p = float(propensity)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"stored propensity out of range: {text!r}")
        return cls(int(index), decision_id, p, int(version), float(ts))

    def expires_at(self, ttl_s: int | None) -> float:
        """Unix time the assignment expires (``inf``: the experiment's life)."""
        return math.inf if ttl_s is None else self.assigned_ts + ttl_s


@dataclass(frozen=True, slots=True)
class UnitDecision:
    """What :meth:`UnitAssigner.assign` decided for one request."""

    assignment: Assignment
    token: str
    outcome: UnitOutcome


class StickyMemo:
    """A bounded LRU of stored sticky assignments, each forgotten when it expires."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[Assignment, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, experiment_id: str, token: str) -> Assignment | None:
        key = (experiment_id, token)
        hit = self._entries.get(key)
        if hit is None:
            return None
        assignment, expires = hit
        if self.clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return assignment

    def put(self, experiment_id: str, token: str, assignment: Assignment, expires: float) -> None:
        key = (experiment_id, token)
        self._entries[key] = (assignment, expires)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, experiment_id: str) -> None:
        """Drop an experiment's entries (its table was rebuilt or its TTL changed)."""
        for key in [k for k in self._entries if k[0] == experiment_id]:
            del self._entries[key]


def assignment_of(local: LocalDecision, now: float) -> Assignment:
    """The rule's decision for a unit, as assigned at ``now``."""
    return Assignment(local.arm_index, local.decision_id, local.propensity, local.version, now)


def rule_of(config: ExperimentConfig, record: AllocationRecord) -> Allocation:
    """The assignment rule for one stored allocation version of ``config``'s experiment."""
    return Allocation(
        experiment_id=config.experiment_id,
        version=record.version,
        arm_ids=record.arm_ids,
        weights=record.weights,
        salt=config.salt,
        unit_id_storage=config.unit_id_storage,
        min_arm_share=record.min_arm_share,
    )


class UnitAssigner:
    """The sticky table (Redis, first writer wins) and the consistent rule of one worker."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: RedisKeys,
        allocations: AllocationStore,
        *,
        memo_entries: int = DEFAULT_MEMO_ENTRIES,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.allocations = allocations
        # The allocation store's clock, read per call (tests move it across epochs).
        self.memo = StickyMemo(memo_entries, lambda: allocations.clock())
        #: (experiment id, salt, storage) -> (record, its rule): rebuilt when the record
        #: of the current version changes (a new epoch).
        self._rules: dict[tuple[str, str, str], tuple[AllocationRecord, Allocation]] = {}

    async def rule(self, entry: CachedExperiment, now: float) -> Allocation:
        """The rule under the stored allocation current at ``now`` (one Redis round trip
        per experiment and epoch; memoised otherwise)."""
        config = entry.config
        record = await self.allocations.for_entry(entry, now)
        key = (config.experiment_id, config.salt, config.unit_id_storage)
        known = self._rules.get(key)
        if known is not None and known[0] is record:
            return known[1]
        rule = rule_of(config, record)
        if known is None and len(self._rules) >= MAX_RULES:
            del self._rules[next(iter(self._rules))]
        self._rules[key] = (record, rule)
        return rule

    async def assign(self, entry: CachedExperiment, unit_id: str, now: float) -> UnitDecision:
        """The arm of ``unit_id`` (already validated) under ``entry``'s mode, which must
        be ``sticky`` or ``consistent``. Raises :class:`redis.exceptions.RedisError`
        when Redis is needed and cannot be reached."""
        config = entry.config
        experiment_id = config.experiment_id
        rule = await self.rule(entry, now)
        token = rule.unit_token(unit_id)
        if config.assignment == "sticky":
            known = self.memo.get(experiment_id, token)
            if known is not None:
                return UnitDecision(known, token, "cached")
        mine = assignment_of(rule.choose(unit_id), now)
        if config.assignment != "sticky":
            return UnitDecision(mine, token, "new")
        ttl = config.sticky_ttl_s
        stored = await self.redis.set(
            self.keys.unit(experiment_id, token), mine.encode(), nx=True, get=True, ex=ttl
        )
        # NX GET: nothing when this write won, else the value stored first (kept as is).
        if isinstance(stored, bytes | str):
            winner = Assignment.decode(stored)
            self.memo.put(experiment_id, token, winner, winner.expires_at(ttl))
            return UnitDecision(winner, token, "stored")
        self.memo.put(experiment_id, token, mine, mine.expires_at(ttl))
        return UnitDecision(mine, token, "new")

    async def current(self, entry: CachedExperiment, unit_id: str, now: float) -> Assignment | None:
        """The unit's current assignment without creating one (rewards by unit):
        sticky → the stored one (``None``: none or expired), consistent → the rule's
        under the current allocation. ``None`` for ``per_request``."""
        config = entry.config
        if config.assignment == "per_request":
            return None
        rule = await self.rule(entry, now)
        if config.assignment == "consistent":
            return assignment_of(rule.choose(unit_id), now)
        token = rule.unit_token(unit_id)
        known = self.memo.get(config.experiment_id, token)
        if known is not None:
            return known
        raw = await self.redis.get(self.keys.unit(config.experiment_id, token))
        if raw is None:
            return None
        stored = Assignment.decode(raw)
        self.memo.put(config.experiment_id, token, stored, stored.expires_at(config.sticky_ttl_s))
        return stored

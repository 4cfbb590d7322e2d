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
returning visitor costs a dict lookup, no hash and no Redis round trip, and is answered
without a coroutine (:meth:`UnitAssigner.assign_now`), as is every consistent unit
under an allocation the worker holds.

A new unit still needs its ``SET NX GET EX``. One round trip per request made that the
sticky path's cost under load (profiled at 32 connections: a third of the worker's time
in redis-py's per-command send, read, timeout and health check), so the writes asked for
in one event-loop iteration go out together, one call per experiment
(:class:`StickyWrites`), as the producer group-commits Kafka sends.

The holdout (``holdout_share``, :mod:`bandit_core.holdout`): the stored allocation's
weights include it, so a unit is first tested against the holdout hash (independent of
the assignment hash): a held-out unit gets the control arm under a marked decision id
(``<rule's id>h``), any other is drawn by the same rule from the weights *without* the
holdout (:func:`~bandit_core.holdout.without_holdout`). Either way it logs its arm's
weight in the stored allocation, the true propensity.

The unit's *token* (the salted digest, or the raw id: the experiment's
``unit_id_storage``) is what the key and the events carry; the raw id is only hashed.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from dataclasses import replace
from typing import Final, Literal, NamedTuple

from bandit_core.allocation import AllocationRecord, version_at
from bandit_core.decision_ids import holdout_decision_id
from bandit_core.holdout import unit_held_out, without_holdout
from mab_client.assignment import Allocation, LocalDecision, decision_id_of, normalize_unit_id
from schemas.events import ExperimentConfig
from schemas.redis_keys import RedisKeys
from services.decider.allocations import AllocationStore
from services.decider.decisions import CachedExperiment
from stream_runtime.redis_client import AnyRedis

#: Sticky assignments each worker remembers (about 200 bytes each in CPython, so the
#: default is ~20 MB): enough for the returning visitors of a busy storefront.
DEFAULT_MEMO_ENTRIES: Final = 100_000
#: Most new units written by one script call; more of one experiment in one iteration go
#: in further calls (a burst never builds one unbounded command or reply).
MAX_WRITE_BATCH: Final = 256
#: Rule objects (salted hash state, per-arm decision id tails) kept per worker: one per
#: active experiment and current allocation version.
MAX_RULES: Final = 1024

#: Where a unit decision came from: ``new`` logs a DecisionMade; ``cached`` and
#: ``stored`` are a returning sticky unit (this worker's memory, or Redis).
UnitOutcome = Literal["new", "cached", "stored"]


class Assignment(NamedTuple):
    """A unit's arm, its decision id and propensity, and when and from which allocation
    version it was assigned (for sticky units, their first request).

    A named tuple (immutable like a frozen dataclass, built by the hot path for every
    consistent decision at a fraction of a frozen dataclass's ``__init__``)."""

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


class UnitDecision(NamedTuple):
    """What :meth:`UnitAssigner.assign` decided for one request."""

    #: The unit's arm, decision id, propensity and allocation version: the rule's
    #: answer itself for a consistent unit, the stored assignment for a sticky one.
    assignment: Assignment | LocalDecision
    #: The unit's token; ``None`` for a returning unit answered from memory (nothing to
    #: log or store, so nothing was hashed).
    token: str | None
    outcome: UnitOutcome


class StickyMemo:
    """A bounded LRU of stored sticky assignments, each forgotten when it expires.

    Keyed by the experiment, its salt and the unit id itself rather than the unit's
    token: a returning visitor is then answered without hashing anything (the token is
    only needed to write or read Redis, or to log a decision, which a returning unit
    does not do). The salt is in the key because it, like the token it makes, is fixed
    for the life of an experiment; an experiment id created again with another salt
    never meets the old entries.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, str], tuple[Assignment, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, config: ExperimentConfig, unit_id: str, now: float) -> Assignment | None:
        """The remembered assignment of ``unit_id`` (valid and trimmed) if it has not
        expired at ``now``."""
        key = (config.experiment_id, config.salt, unit_id)
        hit = self._entries.get(key)
        if hit is None:
            return None
        assignment, expires = hit
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return assignment

    def put(self, config: ExperimentConfig, unit_id: str, assignment: Assignment) -> None:
        """Remember a stored assignment until it expires under ``config``'s TTL."""
        key = (config.experiment_id, config.salt, unit_id)
        self._entries[key] = (assignment, assignment.expires_at(config.sticky_ttl_s))
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, experiment_id: str) -> None:
        """Drop an experiment's entries (its table was rebuilt or its TTL changed)."""
        for key in [k for k in self._entries if k[0] == experiment_id]:
            del self._entries[key]


#: A ``SET NX GET`` reply: ``None`` when ours was stored, else the value stored first
#: (``str`` only on a client that decodes replies).
Stored = bytes | str | None
#: One key's place in a batch: the value sent (the first caller's) and every caller.
_Waiting = tuple[bytes, list["asyncio.Future[Stored]"]]

#: ``SET KEYS[i] ARGV[i + 1] NX GET [EX ARGV[1]]`` for every key, one reply per key
#: (``false``, a nil reply: stored; an error reply: that key's own error, the other keys
#: still written, as separate commands would be). The keys are one experiment's, so
#: one hash slot.
_SET_NX_GET_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  if ARGV[1] == '' then
    out[i] = redis.pcall('SET', key, ARGV[i + 1], 'NX', 'GET')
  else
    out[i] = redis.pcall('SET', key, ARGV[i + 1], 'NX', 'GET', 'EX', ARGV[1])
  end
end
return out
"""


class StickyWrites:
    """``SET key value NX GET EX ttl`` for new sticky units, group-committed.

    Every write asked for during one event-loop iteration waits for the next one, and
    then the writes of one experiment (and TTL) go out as one script call running the
    ``SET``s in order, at most ``max_batch`` keys per call: a burst of N new units costs
    one round trip and one reply parse instead of N. Why a script and not a pipeline of
    N ``SET``s: redis-py parses a pipeline's replies one command at a time in Python
    (with a timeout context each), which profiled at about as much as the decision
    itself; the script's one array reply is parsed in C. Its keys share the
    experiment's hash tag, so it runs in one slot on a Redis Cluster too, and each
    ``SET NX`` in it is exactly the command a single new unit would send.

    Semantics per caller are those of its own ``SET NX GET``: ``None`` when its value was
    stored, else the value stored first. Several callers for one key in one batch
    (the same new unit on concurrent requests) send one ``SET``: the first caller's
    value goes to Redis, and each later caller gets back what a ``SET NX GET`` of its own,
    run right after, would have returned (the stored value). A call that fails (Redis
    unreachable, a timeout) fails every caller of its batch with that error; a ``SET``
    that Redis refuses fails that key's callers only, so no caller is told "error" for
    a unit that was in fact stored (it would never be logged). Nothing is retried here
    (the caller answers 503).
    """

    def __init__(self, redis: AnyRedis, max_batch: int = MAX_WRITE_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._script = redis.register_script(_SET_NX_GET_MANY)
        #: (experiment id, ttl) -> key -> its place, in arrival order.
        self._pending: dict[tuple[str, int | None], dict[str, _Waiting]] = {}
        self._scheduled = False
        #: Script calls in flight (a task must be referenced until it ends).
        self._running: set[asyncio.Task[None]] = set()
        #: Script calls sent so far (what tests and the docs count).
        self.batches = 0

    def set_nx_get(
        self, experiment_id: str, key: str, value: bytes, ttl: int | None
    ) -> asyncio.Future[Stored]:
        """Join the current batch with ``key`` (one of ``experiment_id``'s keys); the
        future resolves to ``None`` (ours was stored) or the value stored first, or
        raises the batch's Redis error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Stored] = loop.create_future()
        group = self._pending.setdefault((experiment_id, ttl), {})
        queued = group.get(key)
        if queued is None:
            group[key] = (value, [fut])
        else:
            queued[1].append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        """Send what this iteration gathered: per experiment, ``max_batch`` keys a call."""
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for (_, ttl), group in pending.items():
            items = list(group.items())
            for lo in range(0, len(items), self.max_batch):
                task = asyncio.ensure_future(self._send(ttl, items[lo : lo + self.max_batch]))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _send(self, ttl: int | None, batch: list[tuple[str, _Waiting]]) -> None:
        self.batches += 1
        keys = [key for key, _ in batch]
        values = [value for _, (value, _) in batch]
        try:
            replies = await self._script(keys=keys, args=["" if ttl is None else ttl, *values])
        except Exception as exc:  # every caller of the batch gets the batch's error
            for _, (_, futures) in batch:
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(exc)
            return
        except asyncio.CancelledError:  # shutdown: the callers are cancelled with it
            for _, (_, futures) in batch:
                for fut in futures:
                    fut.cancel()
            raise
        for (_, (value, futures)), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(reply)
                continue
            stored = reply if isinstance(reply, bytes | str) else None
            for i, fut in enumerate(futures):
                if not fut.done():
                    # The first caller's SET is the batch's; later ones find a value.
                    fut.set_result(stored if i == 0 or stored is not None else value)


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


def choose_unit(
    config: ExperimentConfig, rule: Allocation, bandit: Allocation | None, unit_id: str
) -> tuple[LocalDecision, str]:
    """The unit's decision and token under ``rule`` (the stored allocation) with the
    experiment's holdout: ``bandit`` is ``rule`` without the holdout (``None``: the
    experiment has none, the rule decides alone)."""
    if bandit is None:
        return rule.choose_with_token(unit_id)
    text = normalize_unit_id(unit_id)
    token = rule.unit_token(text)
    if unit_held_out(text, config.salt, config.holdout_share):
        index = config.control_index
        decision_id = holdout_decision_id(decision_id_of(rule.digest(text), rule.version, index))
        held = LocalDecision(
            rule.arm_ids[index], index, decision_id, rule.weights[index], rule.version
        )
        return held, token
    local = bandit.choose(text)
    return local._replace(propensity=rule.weights[local.arm_index]), token


def bandit_rule(config: ExperimentConfig, rule: Allocation) -> Allocation | None:
    """``rule`` without the experiment's holdout (``None`` without a holdout)."""
    if config.holdout_share <= 0.0:
        return None
    weights = without_holdout(rule.weights, config.holdout_share, config.control_index)
    return replace(rule, weights=tuple(weights))


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
        self.memo = StickyMemo(memo_entries)
        self.writes = StickyWrites(redis)
        #: (experiment id, salt, storage) -> (record, its rule): rebuilt when the record
        #: of the current version changes (a new epoch).
        self._rules: dict[tuple[str, str, str], tuple[AllocationRecord, Allocation]] = {}
        #: The same rules without the experiment's holdout (only for experiments with one).
        self._bandit: dict[int, tuple[Allocation, Allocation | None]] = {}

    def _remember_rule(self, config: ExperimentConfig, record: AllocationRecord) -> Allocation:
        """The rule of ``record`` (the memoised one while the record is the same object)."""
        key = (config.experiment_id, config.salt, config.unit_id_storage)
        known = self._rules.get(key)
        if known is not None and known[0] is record:
            return known[1]
        rule = rule_of(config, record)
        if known is None and len(self._rules) >= MAX_RULES:
            del self._rules[next(iter(self._rules))]
        self._rules[key] = (record, rule)
        return rule

    def _choose(
        self, config: ExperimentConfig, rule: Allocation, unit_id: str
    ) -> tuple[LocalDecision, str]:
        """:func:`choose_unit` with this worker's memo of the rules without the holdout."""
        if config.holdout_share <= 0.0:
            return rule.choose_with_token(unit_id)
        known = self._bandit.get(id(rule))
        if known is None or known[0] is not rule:
            if len(self._bandit) >= MAX_RULES:
                del self._bandit[next(iter(self._bandit))]
            known = self._bandit[id(rule)] = (rule, bandit_rule(config, rule))
        return choose_unit(config, rule, known[1], unit_id)

    def rule_now(self, entry: CachedExperiment, now: float) -> Allocation | None:
        """The rule of the allocation current at ``now`` if this worker holds it (no I/O,
        no coroutine: the hot path's case); ``None``: :meth:`rule` must fetch it."""
        config = entry.config
        version = version_at(now, config.allocation_interval_s)
        record = self.allocations.memoized(config.experiment_id, version, now)
        return None if record is None else self._remember_rule(config, record)

    async def rule(self, entry: CachedExperiment, now: float) -> Allocation:
        """The rule under the stored allocation current at ``now`` (one Redis round trip
        per experiment and epoch; memoised otherwise)."""
        rule = self.rule_now(entry, now)
        if rule is not None:
            return rule
        record = await self.allocations.for_entry(entry, now)
        return self._remember_rule(entry.config, record)

    def assign_now(self, entry: CachedExperiment, unit_id: str, now: float) -> UnitDecision | None:
        """:meth:`assign` when it needs no I/O: a returning sticky unit this worker
        remembers (no hashing at all), or a consistent unit under an allocation this
        worker holds. ``None``: a new sticky unit or an allocation to fetch (call
        :meth:`assign`)."""
        config = entry.config
        if config.assignment == "sticky":
            known = self.memo.get(config, unit_id, now)
            return None if known is None else UnitDecision(known, None, "cached")
        rule = self.rule_now(entry, now)
        if rule is None:
            return None
        local, token = self._choose(config, rule, unit_id)
        return UnitDecision(local, token, "new")

    async def assign(self, entry: CachedExperiment, unit_id: str, now: float) -> UnitDecision:
        """The arm of ``unit_id`` (already validated) under ``entry``'s mode, which must
        be ``sticky`` or ``consistent``. Raises :class:`redis.exceptions.RedisError`
        when Redis is needed and cannot be reached."""
        config = entry.config
        if config.assignment == "sticky":
            known = self.memo.get(config, unit_id, now)
            if known is not None:
                return UnitDecision(known, None, "cached")
        rule = await self.rule(entry, now)
        local, token = self._choose(config, rule, unit_id)
        if config.assignment != "sticky":
            return UnitDecision(local, token, "new")
        mine = assignment_of(local, now)
        experiment_id = config.experiment_id
        stored = await self.writes.set_nx_get(
            experiment_id, self.keys.unit(experiment_id, token), mine.encode(), config.sticky_ttl_s
        )
        # NX GET: nothing when this write won, else the value stored first (kept as is).
        if stored is not None:
            winner = Assignment.decode(stored)
            self.memo.put(config, unit_id, winner)
            return UnitDecision(winner, token, "stored")
        self.memo.put(config, unit_id, mine)
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
            return assignment_of(self._choose(config, rule, unit_id)[0], now)
        known = self.memo.get(config, unit_id, now)
        if known is not None:
            return known
        token = rule.unit_token(unit_id)
        raw = await self.redis.get(self.keys.unit(config.experiment_id, token))
        if raw is None:
            return None
        stored = Assignment.decode(raw)
        self.memo.put(config, unit_id, stored)
        return stored

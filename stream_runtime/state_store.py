"""The engine's state store: one read and one compare-and-set write per batch.

Two stores implement :class:`StateStore` with the same semantics: the Redis one
(:class:`stream_runtime.redis_store.RedisStateStore`, one Lua script per direction) and
:class:`MemoryStateStore` here (dicts; the processor tests run over both, and replay
applies whole partitions into one before it bulk-writes them to Redis).

A write lands, atomically, only if

* the experiment's whole applied-offsets hash is still the one the writer read (every
  field, and no other): otherwise someone else wrote in between (the new owner of a
  partition after a rebalance, while we are a zombie; or the owner of the experiment's
  other topic's partition) and the writer must re-read and re-apply instead of
  overwriting their state. Comparing only the fields of the batch's own partitions
  would let a consumer folding the decisions partition overwrite the rewards another
  consumer had just folded into the same snapshot;
* for a write the engine applied from its cache instead of a read
  (:class:`Assumptions`): the string keys still hold the values it assumed and none of
  the dedupe keys and set members it assumed absent exist. Checked in the same atomic
  step, this is the same as a read followed by the write with nothing in between.

Then the state changes, the new offsets and the new dedupe keys are written together,
so the store holds either the state before a batch with the old offsets or the state
after it with the new ones: a redelivered record is at or below the stored offset
exactly when its effect is already in the state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bandit_core.fold import DEDUPE_HORIZON_S
from stream_runtime.processor import Changes, Loaded, Reads, ZAdd


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What to read of one experiment: its guard and the processor's :class:`Reads`."""

    offsets: str
    seen: str
    reads: Reads


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What an apply without a read took the store to hold (see the module docstring)."""

    equal: Mapping[str, bytes | None]  # string key -> value (None: the key is missing)
    absent: Mapping[str, Sequence[str]]  # sorted set -> members that must not be in it


@dataclass(frozen=True, slots=True)
class Write:
    """One experiment's compare-and-set write."""

    experiment_id: str
    offsets: str  # the guard's offsets hash
    expected: Mapping[str, int]  # the whole hash as read ({}: none stored yet)
    new: Mapping[str, int]  # offsets to store
    seen: str  # the guard's dedupe set
    new_seen: Mapping[str, float]  # dedupe key -> event time
    changes: Changes = field(default_factory=Changes)
    assumed: Assumptions | None = None  # None: applied from a read of this batch


class StateStore(Protocol):
    """Where processors' state lives (Redis, or memory)."""

    async def load(self, requests: Mapping[str, LoadRequest]) -> dict[str, Loaded]:
        """Read every experiment of a batch (experiment id -> request) at once."""
        ...

    async def write(self, writes: Sequence[Write], now: float) -> list[str]:
        """Apply every write; return the experiment ids whose write was refused."""
        ...


def prune_cutoff(
    scores: Iterable[float], horizon_s: float, now: float | None = None
) -> float | None:
    """Members older than this may be forgotten (``None``: nothing added, no pruning).

    The newest score added is clamped to the wall clock, so one record with a bogus
    far-future ``ts`` cannot wipe every dedupe key (or change point) of the experiment.
    """
    newest = max(scores, default=None)
    if newest is None:
        return None
    return min(newest, time.time() if now is None else now) - horizon_s


def seen_zadd(new_seen: Mapping[str, float]) -> ZAdd:
    """The guard's dedupe keys as a sorted-set addition with the dedupe horizon."""
    return ZAdd(new_seen, DEDUPE_HORIZON_S)


class MemoryStateStore:
    """A :class:`StateStore` in dicts, with the Redis store's semantics.

    Strings are bytes, hashes map fields to ints (offsets and bucket counters), sorted
    sets map members to scores. With ``prune=False`` sorted sets keep every member and
    only remember each set's horizon: replay prunes once, from the whole set, when it
    writes the result (:meth:`pruned`), as the live processors would have by then.
    """

    def __init__(self, *, prune: bool = True) -> None:
        self.prune = prune
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, int]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.expire_at: dict[str, int] = {}
        self.horizons: dict[str, float] = {}
        self.offsets_keys: set[str] = set()
        self._lowest: dict[str, float] = {}  # a lower bound of each sorted set's scores
        self.published: list[tuple[str, str]] = []

    async def load(self, requests: Mapping[str, LoadRequest]) -> dict[str, Loaded]:
        out: dict[str, Loaded] = {}
        strings, zsets = self.strings, self.zsets
        for exp, req in requests.items():
            reads = req.reads
            seen = zsets.get(req.seen, {})
            found: dict[str, Mapping[str, float]] = {}
            for key, members in reads.members.items():
                zset = zsets.get(key, {})
                found[key] = {m: zset[m] for m in members if m in zset}
            out[exp] = Loaded(
                offsets=dict(self.hashes.get(req.offsets, {})),
                values={k: strings.get(k) for k in reads.get},
                seen={k: seen[k] for k in reads.seen if k in seen},
                found=found,
            )
        return out

    def _refuses(self, w: Write) -> bool:
        if self.hashes.get(w.offsets, {}) != dict(w.expected):
            return True
        a = w.assumed
        if a is None:
            return False
        if any(self.strings.get(k) != v for k, v in a.equal.items()):
            return True
        return any(
            not self.zsets.get(key, {}).keys().isdisjoint(members)
            for key, members in a.absent.items()
        )

    async def write(self, writes: Sequence[Write], now: float) -> list[str]:
        refused: list[str] = []
        for w in writes:
            c = w.changes
            self.published.extend(c.publish)
            if self._refuses(w):
                refused.append(w.experiment_id)
                continue
            self.strings.update(c.set)
            self.offsets_keys.add(w.offsets)
            self.hashes.setdefault(w.offsets, {}).update(w.new)
            if w.new_seen:
                self._zadd(w.seen, seen_zadd(w.new_seen), now)
            for key, add in c.zadd.items():
                self._zadd(key, add, now)
            for key, members in c.zrem.items():
                zset = self.zsets.get(key, {})
                for m in members:
                    zset.pop(m, None)
            for key, increments in c.hincr.items():
                bucket = self.hashes.setdefault(key, {})
                for f, n in increments.items():
                    bucket[f] = bucket.get(f, 0) + n
            for key, at in c.expireat.items():
                if at <= now:  # as EXPIREAT: a time in the past deletes the key
                    self.hashes.pop(key, None)
                    self.expire_at.pop(key, None)
                else:
                    self.expire_at[key] = at
        return refused

    def _zadd(self, key: str, add: ZAdd, now: float) -> None:
        zset = self.zsets.setdefault(key, {})
        zset.update(add.members)
        if not add.members:
            return
        lowest = min(add.members.values())
        if lowest < self._lowest.get(key, lowest + 1):
            self._lowest[key] = lowest
        if add.horizon_s is None:
            return
        self.horizons[key] = add.horizon_s
        if not self.prune:
            return
        cutoff = prune_cutoff(add.members.values(), add.horizon_s, now)
        # Scan only when something may be older than the cutoff (a full scan per write
        # would make a long stream quadratic).
        if cutoff is not None and self._lowest[key] < cutoff:
            kept = {m: s for m, s in zset.items() if s >= cutoff}
            self.zsets[key] = kept
            self._lowest[key] = min(kept.values(), default=cutoff)

    def pruned(self, key: str, now: float) -> dict[str, float]:
        """A sorted set as the live processors would have pruned it by now: without the
        members older than its horizon before its newest member (clamped to ``now``)."""
        zset = self.zsets.get(key, {})
        horizon = self.horizons.get(key)
        cutoff = None if horizon is None else prune_cutoff(zset.values(), horizon, now)
        if cutoff is None:
            return dict(zset)
        return {m: s for m, s in zset.items() if s >= cutoff}

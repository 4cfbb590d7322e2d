"""Redis access of the reward consumer: one read and one write round trip per batch.

Both directions go through Lua scripts that touch only one experiment's hash-tagged
keys, so each is atomic per experiment (and runs unchanged on a Redis Cluster, where
a MULTI over several experiments' slots would not). All experiments of a batch share
one pipeline per direction (concurrent calls on a cluster, see
:func:`stream_runtime.redis_client.run_scripts`).

* The read script returns config, snapshot, applied offsets and the scores of the
  batch's dedupe keys *in one atomic step*: a pipeline of plain GET/HGETALL could
  interleave with another consumer's write and pair an old snapshot with new offsets,
  which the compare-and-set below would then wrongly accept.
* The write script is a compare-and-set on the applied offsets of the partitions the
  batch touched: if they are not what we read, someone else (the new owner of a
  partition after a rebalance, while we are a zombie) wrote in between and we must
  reload and re-fold instead of overwriting their snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bandit_core.fold import DEDUPE_HORIZON_S
from schemas.redis_keys import ExperimentKeys, RedisKeys
from stream_runtime.redis_client import AnyRedis, ScriptCall, run_scripts

# ARGV: n, n dedupe keys, then the decision ids whose pending deadline is wanted (an
# empty reply for those when the experiment has no open window at all: the common case).
_READ_LUA: Final = """
local config = redis.call('GET', KEYS[1])
local snap = redis.call('GET', KEYS[2])
local offsets = redis.call('HGETALL', KEYS[3])
local n = tonumber(ARGV[1])
local scores = {}
for i = 1, n do
  scores[i] = redis.call('ZSCORE', KEYS[4], ARGV[1 + i])
end
local pending = {}
if #ARGV > n + 1 and redis.call('EXISTS', KEYS[5]) == 1 then
  for i = n + 2, #ARGV do
    pending[#pending + 1] = redis.call('ZSCORE', KEYS[5], ARGV[i])
  end
end
return {config, snap, offsets, scores, pending}
"""

# KEYS: snapshot, offsets, seen, pending.
# ARGV: snapshot, prune cutoff ('' = none), n, then n x (field, expected, new), then
# np, np x (deadline, decision id) opened, nr, nr x decision id closed, then
# (score, member) pairs for ZADD. expected '' means "no offset stored yet".
_WRITE_LUA: Final = """
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local cur = redis.call('HGET', KEYS[2], ARGV[4 + 3 * i])
  if cur == false then cur = '' end
  if cur ~= ARGV[5 + 3 * i] then
    return {0, ARGV[4 + 3 * i], cur}
  end
end
redis.call('SET', KEYS[1], ARGV[1])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[2], ARGV[4 + 3 * i], ARGV[6 + 3 * i])
end
local at = 4 + 3 * n
local np = tonumber(ARGV[at])
local chunk = {}
for j = at + 1, at + 2 * np, 2 do
  chunk[#chunk + 1] = ARGV[j]
  chunk[#chunk + 1] = ARGV[j + 1]
  if #chunk >= 1000 then
    redis.call('ZADD', KEYS[4], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then redis.call('ZADD', KEYS[4], unpack(chunk)) end
at = at + 1 + 2 * np
local nr = tonumber(ARGV[at])
chunk = {}
for j = at + 1, at + nr do
  chunk[#chunk + 1] = ARGV[j]
  if #chunk >= 1000 then
    redis.call('ZREM', KEYS[4], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then redis.call('ZREM', KEYS[4], unpack(chunk)) end
local first = at + 1 + nr
chunk = {}
for j = first, #ARGV, 2 do
  chunk[#chunk + 1] = ARGV[j]
  chunk[#chunk + 1] = ARGV[j + 1]
  if #chunk >= 1000 then
    redis.call('ZADD', KEYS[3], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then
  redis.call('ZADD', KEYS[3], unpack(chunk))
end
if ARGV[2] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[2])
end
return {1}
"""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the read script returned for one experiment."""

    config: bytes | None
    snapshot: bytes | None
    offsets: dict[str, int]
    seen: dict[str, float]
    pending: dict[str, float] = field(default_factory=dict)  # the asked ids still open


@dataclass(frozen=True, slots=True)
class Write:
    """One experiment's compare-and-set write."""

    experiment_id: str
    snapshot: bytes
    expected: Mapping[str, int]  # offsets read (missing field = never applied)
    new: Mapping[str, int]  # offsets to store
    new_seen: Mapping[str, float]
    pending_added: Mapping[str, float] = field(default_factory=dict)  # id -> deadline
    pending_removed: Sequence[str] = ()


def prune_cutoff(new_seen: Mapping[str, float], now: float | None = None) -> float | None:
    """Dedupe keys older than this are forgotten (``None``: nothing new, no pruning).

    The newest event time of the batch is clamped to the wall clock, so one record with
    a bogus far-future ``ts`` cannot wipe every dedupe key of the experiment.
    """
    if not new_seen:
        return None
    newest = min(max(new_seen.values()), time.time() if now is None else now)
    return newest - DEDUPE_HORIZON_S


def _write_args(w: Write) -> list[Any]:
    cutoff = prune_cutoff(w.new_seen)
    fields = sorted(w.new)
    args: list[Any] = [w.snapshot, "" if cutoff is None else repr(cutoff), len(fields)]
    for f in fields:
        old = w.expected.get(f)
        args += [f, "" if old is None else str(old), str(w.new[f])]
    args.append(len(w.pending_added))
    for decision_id, deadline in w.pending_added.items():
        args += [repr(deadline), decision_id]
    args.append(len(w.pending_removed))
    args += w.pending_removed
    for member, score in w.new_seen.items():
        args += [repr(score), member]
    return args


class ConsumerStore:
    """The consumer's view of Redis (the experiment keys and the snapshot channel)."""

    def __init__(self, redis: AnyRedis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._read = redis.register_script(_READ_LUA)
        self._write = redis.register_script(_WRITE_LUA)

    def _k(self, experiment_id: str) -> ExperimentKeys:
        return self.keys.experiment(experiment_id)

    async def load(
        self,
        wanted: Mapping[str, Sequence[str]],
        pending: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, Loaded]:
        """Read every experiment of a batch in one round trip.

        ``wanted`` maps experiment id -> the batch's dedupe keys for it, ``pending``
        experiment id -> the decision ids whose open attribution window the fold needs.
        """
        pending = pending or {}
        ids = list(wanted)
        if not ids:
            return {}
        calls = []
        for exp in ids:
            k = self._k(exp)
            keys = wanted[exp]
            calls.append(
                ScriptCall(
                    self._read,
                    [k.config, k.snapshot, k.offsets, k.seen, k.pending],
                    [len(keys), *keys, *pending.get(exp, ())],
                )
            )
        replies = await run_scripts(self.redis, calls)
        out: dict[str, Loaded] = {}
        for exp, reply in zip(ids, replies, strict=True):
            config, snap, flat, scores, open_scores = reply
            offsets = {
                (flat[i].decode() if isinstance(flat[i], bytes) else flat[i]): int(flat[i + 1])
                for i in range(0, len(flat), 2)
            }
            seen = {
                key: float(score)
                for key, score in zip(wanted[exp], scores, strict=True)
                if score is not None
            }
            asked = pending.get(exp, ()) if open_scores else ()
            open_windows = {
                decision_id: float(score)
                for decision_id, score in zip(asked, open_scores, strict=True)
                if score is not None
            }
            out[exp] = Loaded(config, snap, offsets, seen, open_windows)
        return out

    async def write(self, writes: Sequence[Write]) -> list[str]:
        """Apply all compare-and-set writes in one round trip; return conflicted ids.

        The snapshot channel gets each written experiment id (decider cache
        invalidation); publishing for a conflicted one is a harmless extra reload.
        """
        if not writes:
            return []
        channel = self.keys.snapshot_channel()
        calls = []
        for w in writes:
            k = self._k(w.experiment_id)
            calls.append(
                ScriptCall(self._write, [k.snapshot, k.offsets, k.seen, k.pending], _write_args(w))
            )
        replies = await run_scripts(
            self.redis, calls, publish=[(channel, w.experiment_id) for w in writes]
        )
        return [
            w.experiment_id for w, reply in zip(writes, replies, strict=True) if int(reply[0]) != 1
        ]

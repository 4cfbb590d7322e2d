"""Redis access of the reward consumer: a read and a write round trip per batch at most.

Both directions go through Lua scripts that touch only one experiment's hash-tagged
keys, so each is atomic per experiment (and runs unchanged on a Redis Cluster, where
a MULTI over several experiments' slots would not). All experiments of a batch share
one pipeline per direction (concurrent calls on a cluster, see
:func:`stream_runtime.redis_client.run_scripts`).

* The read script returns config, snapshot, applied offsets and the scores of the
  batch's dedupe keys *in one atomic step*: a pipeline of plain GET/HGETALL could
  interleave with another consumer's write and pair an old snapshot with new offsets,
  which the compare-and-set below would then wrongly accept.
* The write script is a compare-and-set on the experiment's whole applied-offsets
  hash: if it is not what we read, someone else (the new owner of a partition after a
  rebalance, while we are a zombie; or the owner of the experiment's other topic's
  partition) wrote in between and we must reload and re-fold instead of overwriting
  their snapshot. (Comparing only the fields of the batch's own partitions would let a
  consumer folding the decisions partition overwrite the rewards another consumer had
  just folded into the same snapshot.)
* A write may instead carry what a fold made *without* a read assumed
  (:class:`Assumed`); the script checks it in the same atomic step. This is what lets
  the handler fold from its in-process cache and skip the read round trip.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from bandit_core.fold import DEDUPE_HORIZON_S
from schemas.redis_keys import ExperimentKeys, RedisKeys
from stream_runtime.redis_client import AnyRedis, ScriptCall, run_scripts

# Arguments travel as one JSON array each (decoded by the scripts with Redis's built-in
# ``cjson``): a batch names tens of thousands of dedupe keys, and packing each as its own
# RESP argument cost redis-py ~35 us per key in Python (a quarter of a batch's time);
# ``orjson.dumps`` of the list is a single C call. Scores and deadlines go as JSON
# numbers: ``cjson`` parses them with ``strtod`` and Redis hands a Lua number to ZADD in
# its shortest round-trip form, so the stored double is exactly the Python float.

# ARGV: JSON array of dedupe keys (their scores are returned), JSON array of the
# decision ids whose pending deadline is wanted (an empty reply for those when the
# experiment has no open window at all: the common case).
_READ_LUA: Final = """
local config = redis.call('GET', KEYS[1])
local snap = redis.call('GET', KEYS[2])
local offsets = redis.call('HGETALL', KEYS[3])
local scores = {}
for i, member in ipairs(cjson.decode(ARGV[1])) do
  scores[i] = redis.call('ZSCORE', KEYS[4], member)
end
local pending = {}
local ids = cjson.decode(ARGV[2])
if #ids > 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  for i, id in ipairs(ids) do
    pending[i] = redis.call('ZSCORE', KEYS[5], id)
  end
end
return {config, snap, offsets, scores, pending}
"""

# KEYS: snapshot, offsets, seen, pending, config.
# ARGV: snapshot, prune cutoff ('' = none), expected offsets (JSON object field ->
# offset string: the WHOLE hash as read), new offsets (JSON object), pending opened
# (JSON object id -> deadline), pending closed (JSON [id, ...]), new dedupe keys (JSON
# object member -> score), then either '' or the assumptions of a fold made without a read
# (see ConsumerStore.write): '1', expected config, expected snapshot, JSON [seen keys
# that must be absent], JSON [pending ids that must be absent].
# Reply: {1} written; {0, field, current} offsets differ; {2, what} an assumption failed.
_WRITE_LUA: Final = """
local expected = cjson.decode(ARGV[3])
local current = redis.call('HGETALL', KEYS[2])
for i = 1, #current, 2 do
  if expected[current[i]] ~= current[i + 1] then
    return {0, current[i], current[i + 1]}
  end
end
local want = 0
for _ in pairs(expected) do want = want + 1 end
if want ~= #current / 2 then
  return {0, '', ''}
end
if ARGV[8] ~= '' then
  if redis.call('GET', KEYS[5]) ~= ARGV[9] then return {2, 'config'} end
  if redis.call('GET', KEYS[1]) ~= ARGV[10] then return {2, 'snapshot'} end
  for _, member in ipairs(cjson.decode(ARGV[11])) do
    if redis.call('ZSCORE', KEYS[3], member) then return {2, 'seen'} end
  end
  local ids = cjson.decode(ARGV[12])
  if #ids > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
    for _, id in ipairs(ids) do
      if redis.call('ZSCORE', KEYS[4], id) then return {2, 'pending'} end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
for field, offset in pairs(cjson.decode(ARGV[4])) do
  redis.call('HSET', KEYS[2], field, offset)
end
-- ZADD/ZREM in chunks of 1000 arguments (Lua's unpack has a stack limit).
local chunk = {}
local function flush(cmd, key)
  if #chunk > 0 then redis.call(cmd, key, unpack(chunk)) end
  chunk = {}
end
for id, deadline in pairs(cjson.decode(ARGV[5])) do
  chunk[#chunk + 1] = deadline
  chunk[#chunk + 1] = id
  if #chunk >= 1000 then flush('ZADD', KEYS[4]) end
end
flush('ZADD', KEYS[4])
for _, id in ipairs(cjson.decode(ARGV[6])) do
  chunk[#chunk + 1] = id
  if #chunk >= 1000 then flush('ZREM', KEYS[4]) end
end
flush('ZREM', KEYS[4])
for member, score in pairs(cjson.decode(ARGV[7])) do
  chunk[#chunk + 1] = score
  chunk[#chunk + 1] = member
  if #chunk >= 1000 then flush('ZADD', KEYS[3]) end
end
flush('ZADD', KEYS[3])
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
class Assumed:
    """What a fold made without a read took Redis to hold (see :meth:`ConsumerStore.write`).

    The fold of a batch depends on exactly these: the config and snapshot it started
    from, and for every dedupe key and attribution window the batch looks up, whether
    Redis has it. A fold from a cache assumes the cached config and snapshot and that
    none of the looked-up keys and ids exist (the batch's own keys are new by design).
    """

    config: bytes
    snapshot: bytes
    absent_seen: Sequence[str]
    absent_pending: Sequence[str]


@dataclass(frozen=True, slots=True)
class Write:
    """One experiment's compare-and-set write."""

    experiment_id: str
    snapshot: bytes
    expected: Mapping[str, int]  # the whole offsets hash as read ({}: none stored yet)
    new: Mapping[str, int]  # offsets to store
    new_seen: Mapping[str, float]
    pending_added: Mapping[str, float] = field(default_factory=dict)  # id -> deadline
    pending_removed: Sequence[str] = ()
    assumed: Assumed | None = None  # None: the fold started from a read of this batch


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
    args: list[Any] = [
        w.snapshot,
        "" if cutoff is None else repr(cutoff),
        orjson.dumps({f: str(o) for f, o in w.expected.items()}),
        orjson.dumps({f: str(o) for f, o in w.new.items()}),
        orjson.dumps(w.pending_added),
        orjson.dumps(list(w.pending_removed)),
        orjson.dumps(w.new_seen),
    ]
    a = w.assumed
    if a is None:
        args.append("")
    else:
        args += [
            "1",
            a.config,
            a.snapshot,
            orjson.dumps(list(a.absent_seen)),
            orjson.dumps(list(a.absent_pending)),
        ]
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
                    [orjson.dumps(list(keys)), orjson.dumps(list(pending.get(exp, ())))],
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
        """Apply all compare-and-set writes in one round trip; return the ids not written.

        A write lands only if the experiment's whole offsets hash is still ``expected``
        (every field, and no other: a partition first written by someone else since our
        read counts as a change too), and, for a write with :class:`Assumed`, only if
        Redis also holds the assumed config and snapshot and none of the assumed-absent
        dedupe keys and open windows. Checked and written in one script, this is the
        same as a read of those keys followed by the write with nothing in between: a
        fold from a cache is as exactly-once as one from a fresh read, or it does not
        land and the caller re-reads. The snapshot channel gets each written experiment
        id (decider cache invalidation); publishing for a refused one is a harmless
        extra reload.
        """
        if not writes:
            return []
        channel = self.keys.snapshot_channel()
        calls = []
        for w in writes:
            k = self._k(w.experiment_id)
            calls.append(
                ScriptCall(
                    self._write,
                    [k.snapshot, k.offsets, k.seen, k.pending, k.config],
                    _write_args(w),
                )
            )
        replies = await run_scripts(
            self.redis, calls, publish=[(channel, w.experiment_id) for w in writes]
        )
        return [
            w.experiment_id for w, reply in zip(writes, replies, strict=True) if int(reply[0]) != 1
        ]

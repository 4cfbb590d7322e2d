"""Redis access of the projector: one read and one write round trip per batch.

Both go through Lua scripts touching only one experiment's hash-tagged keys (one
Cluster slot), so each is atomic per experiment; all experiments of a batch share one
pipeline per direction (concurrent calls on a cluster, see
:func:`stream_runtime.redis_client.run_scripts`).

* Read: the config (for ``reward_rejection``), the projector's applied offsets and the
  scores of the batch's dedupe keys, in one atomic step (a plain pipeline could pair
  old offsets with dedupe keys written after them).
* Write: a compare-and-set on the applied offsets of the partitions the batch touched
  (a zombie projector that lost a partition in a rebalance loses this race, reloads and
  finds its records applied), then, in the same atomic step, every bucket increment
  (``HINCRBY`` + ``EXPIREAT``), the new offsets, dedupe keys and change points. So Redis
  holds either the buckets before the batch with the old offsets or after it with the
  new ones: a redelivered record is at or below the stored offset exactly when its
  increments are already in the buckets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from schemas.redis_keys import ExperimentKeys, RedisKeys
from services.projector.projection import (
    Projection,
    Retention,
    prune_cutoff,
    seen_cutoff,
)
from stream_runtime.redis_client import AnyRedis, ScriptCall, run_scripts

# ARGV[1]: JSON array of the batch's dedupe keys (one argument, decoded by cjson in C:
# far cheaper than one RESP argument per key). Returns the 1-based positions of the keys
# already in the seen set: usually none, so the reply stays tiny.
_READ_LUA: Final = """
local config = redis.call('GET', KEYS[1])
local offsets = redis.call('HGETALL', KEYS[2])
local found = {}
local wanted = cjson.decode(ARGV[1])
for i = 1, #wanted do
  if redis.call('ZSCORE', KEYS[3], wanted[i]) then found[#found + 1] = i end
end
return {config, offsets, found}
"""

# KEYS: offsets, seen, change points, then one key per bucket.
# ARGV: n, n x (field, expected, new); JSON [score, member, ...] of new dedupe keys; seen
# cutoff; JSON [score, member, ...] of change points; cp cutoff; then per bucket key:
# expireat, nf, nf x (field, increment). '' means "none" for expected and cutoffs.
# Scores travel as JSON *strings* so cjson never rounds them (it prints 14 digits).
_WRITE_LUA: Final = """
local i = 1
local n = tonumber(ARGV[i]); i = i + 1
for j = 0, n - 1 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i + 3 * j])
  if cur == false then cur = '' end
  if cur ~= ARGV[i + 3 * j + 1] then
    return {0, ARGV[i + 3 * j], cur}
  end
end
for j = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[i + 3 * j], ARGV[i + 3 * j + 2])
end
i = i + 3 * n
for z = 2, 3 do
  local flat = cjson.decode(ARGV[i]); i = i + 1
  local chunk = {}
  for j = 1, #flat do
    chunk[#chunk + 1] = flat[j]
    if #chunk >= 1000 then
      redis.call('ZADD', KEYS[z], unpack(chunk))
      chunk = {}
    end
  end
  if #chunk > 0 then redis.call('ZADD', KEYS[z], unpack(chunk)) end
  local cutoff = ARGV[i]; i = i + 1
  if cutoff ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[z], '-inf', '(' .. cutoff)
  end
end
for k = 4, #KEYS do
  local expire_at = ARGV[i]
  local nf = tonumber(ARGV[i + 1])
  i = i + 2
  for j = 0, nf - 1 do
    redis.call('HINCRBY', KEYS[k], ARGV[i + 2 * j], ARGV[i + 2 * j + 1])
  end
  i = i + 2 * nf
  redis.call('EXPIREAT', KEYS[k], expire_at)
end
return {1}
"""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the read script returned for one experiment."""

    config: bytes | None
    offsets: dict[str, int]
    seen: frozenset[str]  # the batch's dedupe keys the projector has seen before


@dataclass(frozen=True, slots=True)
class Write:
    """One experiment's compare-and-set write."""

    experiment_id: str
    expected: Mapping[str, int]  # offsets read (missing field = never applied)
    projection: Projection


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def write_call(
    keys: ExperimentKeys, w: Write, retention: Retention, now: float
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the write script for one experiment (pure, unit-testable)."""
    p = w.projection
    fields = sorted(p.offsets)
    args: list[Any] = [len(fields)]
    for f in fields:
        old = w.expected.get(f)
        args += [f, "" if old is None else str(old), str(p.offsets[f])]
    # One entry per reward dedupe key (the hot part of this function). A reward's keys
    # share one ts object, so its repr is reused while the same object repeats.
    seen_flat: list[str] = []
    push = seen_flat.append
    last: float | None = None
    text = ""
    for member, score in p.new_seen.items():
        if score is not last:
            last, text = score, repr(score)
        push(text)
        push(member)
    args.append(orjson.dumps(seen_flat))
    cutoff = seen_cutoff(p.new_seen, now)
    args.append("" if cutoff is None else repr(cutoff))
    cp_flat: list[str] = []
    for cp_member, score in p.change_points.items():
        cp_flat += (repr(score), cp_member.decode())
    args.append(orjson.dumps(cp_flat))
    cp_cut = prune_cutoff(p.change_points.values(), retention.hour_s, now)
    args.append("" if cp_cut is None else repr(cp_cut))
    redis_keys = [keys.projector_offsets, keys.projector_seen, keys.change_points]
    add = args.append
    for (kind, start), counter in sorted(p.buckets.items()):
        redis_keys.append(keys.bucket(kind, start))
        add(retention.expires_at(kind, start))
        count_at = len(args)
        add(0)  # number of fields, patched below (zero increments are not sent)
        for f, n in counter.items():
            if n:
                add(f)
                add(n)
        args[count_at] = (len(args) - count_at - 1) // 2
    return redis_keys, args


class ProjectorStore:
    """The projector's view of Redis."""

    def __init__(self, redis: AnyRedis, keys: RedisKeys, retention: Retention) -> None:
        self.redis = redis
        self.keys = keys
        self.retention = retention
        self._read = redis.register_script(_READ_LUA)
        self._write = redis.register_script(_WRITE_LUA)

    async def load(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, Loaded]:
        """Read every experiment of a batch in one round trip.

        ``wanted`` maps experiment id -> the batch's dedupe keys for it.
        """
        ids = list(wanted)
        if not ids:
            return {}
        calls = []
        for exp in ids:
            k = self.keys.experiment(exp)
            calls.append(
                ScriptCall(
                    self._read,
                    [k.config, k.projector_offsets, k.projector_seen],
                    [orjson.dumps(list(wanted[exp]))],
                )
            )
        replies = await run_scripts(self.redis, calls)
        out: dict[str, Loaded] = {}
        for exp, reply in zip(ids, replies, strict=True):
            config, flat, found = reply
            offsets = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
            asked = wanted[exp]
            out[exp] = Loaded(config, offsets, frozenset(asked[int(i) - 1] for i in found))
        return out

    async def write(self, writes: Sequence[Write], now: float) -> list[str]:
        """Apply all compare-and-set writes in one round trip; return conflicted ids."""
        if not writes:
            return []
        calls = []
        for w in writes:
            keys, args = write_call(self.keys.experiment(w.experiment_id), w, self.retention, now)
            calls.append(ScriptCall(self._write, keys, args))
        replies = await run_scripts(self.redis, calls)
        return [w.experiment_id for w, r in zip(writes, replies, strict=True) if int(r[0]) != 1]

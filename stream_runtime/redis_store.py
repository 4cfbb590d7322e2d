"""The engine's Redis state store: one Lua script per direction, named arguments.

Each script touches the keys of one experiment only (one hash tag, one Cluster slot),
so it is atomic per experiment and runs unchanged on a Redis Cluster, where a ``MULTI``
over several experiments' slots would not. All experiments of a batch share one
pipeline per direction (concurrent calls on a cluster, see
:func:`stream_runtime.redis_client.run_scripts`). What the write guarantees is
:mod:`stream_runtime.state_store`'s docstring; this module is how.

* The read returns the applied offsets, the string keys, and which of the batch's
  dedupe keys and set members exist, *in one atomic step*: a pipeline of plain reads
  could interleave with another consumer's write and pair an old snapshot with new
  offsets, which the compare-and-set would then wrongly accept.
* The write checks the whole offsets hash and the assumptions of a cached apply, then
  writes the changes, the new offsets and the new dedupe keys, in the same step.

Arguments are named: ``ARGV[1]`` is one JSON table the scripts read by field name
(Redis's Lua has ``cjson``; ``cmsgpack`` decoded a batch's dedupe keys ~20% faster in
Redis, but packing them cost Python ~2.5x what ``orjson`` does, and Python is where a
processor's time goes). Byte strings (snapshots, configs) travel as further arguments
the table points at by position: escaped inside JSON, a 1.4 MB snapshot of 1,000 arms
cost Redis 5.3 ms to decode against 2.0 ms as its own argument. Dedupe keys go as one
JSON object (``orjson`` packs it in one C call: one RESP argument per key cost redis-py
~35 us a key); scores as JSON numbers, which ``cjson`` parses with ``strtod`` and Redis
hands to ``ZADD`` in round-trip form, so the stored double is exactly the Python float.
Offsets, cutoffs, increments and expiry times go as strings: a Lua number would print a
large one in exponent form, or round it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import hiredis
import orjson
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from bandit_core.fold import DEDUPE_HORIZON_S
from stream_runtime.processor import Loaded
from stream_runtime.redis_client import AnyRedis, ScriptCall, run_scripts
from stream_runtime.state_store import LoadRequest, MemoryStateStore, Write, prune_cutoff

# ARGV[1]: {"offsets": key, "get": [key, ...], "sets": [[key, [member, ...]], ...]}; the
# first set is the guard's dedupe set. A set that does not exist is not searched (the
# common case for open attribution windows).
# Reply: {offsets (HGETALL), {value or nil, ...}, {{index, score, ...} per set}}.
_READ_LUA: Final = """
local t = cjson.decode(ARGV[1])
local offsets = redis.call('HGETALL', t.offsets)
local values = {}
for i, key in ipairs(t.get) do
  values[i] = redis.call('GET', key)
end
local found = {}
for s, set in ipairs(t.sets) do
  local hits = {}
  local members = set[2]
  if #members > 0 and redis.call('EXISTS', set[1]) == 1 then
    for i, member in ipairs(members) do
      local score = redis.call('ZSCORE', set[1], member)
      if score then
        hits[#hits + 1] = i
        hits[#hits + 1] = score
      end
    end
  end
  found[s] = hits
end
return {offsets, values, found}
"""

# ARGV[1]: {"offsets": key, "expected": {field: "offset"} (the WHOLE hash as read),
#           "new": {field: "offset"},
#           "equal": [[key, argv index or 0 (must be missing)], ...]   (cached apply only),
#           "absent": [[zset key, [member, ...]], ...]                  (cached apply only),
#           "set": [[key, argv index], ...],
#           "zadd": [[key, {member: score}, "cutoff" or ""], ...],
#           "zrem": [[key, [member, ...]], ...],
#           "hincr": [[key, [field, "n", field, "n", ...], "expireat" or ""], ...]}
# ARGV[2..]: the byte strings "equal" and "set" point at.
# Reply: {1} written; {0, field, current} offsets differ; {2, key} an assumption failed.
_WRITE_LUA: Final = """
local t = cjson.decode(ARGV[1])
local expected = t.expected
local current = redis.call('HGETALL', t.offsets)
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
for _, pair in ipairs(t.equal) do
  local value = false
  if pair[2] > 0 then value = ARGV[pair[2]] end
  if redis.call('GET', pair[1]) ~= value then return {2, pair[1]} end
end
for _, set in ipairs(t.absent) do
  if #set[2] > 0 and redis.call('EXISTS', set[1]) == 1 then
    for _, member in ipairs(set[2]) do
      if redis.call('ZSCORE', set[1], member) then return {2, set[1]} end
    end
  end
end
for _, pair in ipairs(t.set) do
  redis.call('SET', pair[1], ARGV[pair[2]])
end
local flat = {}
for f, offset in pairs(t.new) do
  flat[#flat + 1] = f
  flat[#flat + 1] = offset
end
if #flat > 0 then redis.call('HSET', t.offsets, unpack(flat)) end
-- ZADD/ZREM in chunks of 1000 arguments (Lua's unpack has a stack limit).
local chunk = {}
local function flush(cmd, key)
  if #chunk > 0 then redis.call(cmd, key, unpack(chunk)) end
  chunk = {}
end
for _, add in ipairs(t.zadd) do
  for member, score in pairs(add[2]) do
    chunk[#chunk + 1] = score
    chunk[#chunk + 1] = member
    if #chunk >= 1000 then flush('ZADD', add[1]) end
  end
  flush('ZADD', add[1])
  if add[3] ~= '' then
    redis.call('ZREMRANGEBYSCORE', add[1], '-inf', '(' .. add[3])
  end
end
for _, rem in ipairs(t.zrem) do
  for _, member in ipairs(rem[2]) do
    chunk[#chunk + 1] = member
    if #chunk >= 1000 then flush('ZREM', rem[1]) end
  end
  flush('ZREM', rem[1])
end
for _, h in ipairs(t.hincr) do
  local fields = h[2]
  for i = 1, #fields, 2 do
    redis.call('HINCRBY', h[1], fields[i], fields[i + 1])
  end
  if h[3] ~= '' then redis.call('EXPIREAT', h[1], h[3]) end
end
return {1}
"""

# ARGV[1]: {"offsets": [key, ...], "set": [[key, argv index], ...],
#           "hashes": [[key, {field: "value"}], ...]}; ARGV[2..]: the byte strings.
# Replay's last step for one experiment: refused ({0}) unless no offsets hash exists.
_RESTORE_LUA: Final = """
local t = cjson.decode(ARGV[1])
for _, key in ipairs(t.offsets) do
  if redis.call('EXISTS', key) == 1 then return {0} end
end
for _, pair in ipairs(t.set) do
  redis.call('SET', pair[1], ARGV[pair[2]])
end
for _, h in ipairs(t.hashes) do
  local flat = {}
  for f, v in pairs(h[2]) do
    flat[#flat + 1] = f
    flat[#flat + 1] = v
  end
  if #flat > 0 then redis.call('HSET', h[1], unpack(flat)) end
end
return {1}
"""

# ARGV[1]: [[key, "expireat", field, "value", field, "value", ...], ...] (keys of one
# experiment; KEYS[1] is one of them, for the Cluster router).
_BULK_HASHES_LUA: Final = """
local hashes = cjson.decode(ARGV[1])
for b = 1, #hashes do
  local h = hashes[b]
  redis.call('HSET', h[1], unpack(h, 3))
  if h[2] ~= '' then redis.call('EXPIREAT', h[1], h[2]) end
end
return #hashes
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def write_args(w: Write, now: float) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the write script for one experiment (pure, unit-testable)."""
    c = w.changes
    keys = [w.offsets, w.seen]
    blobs: list[bytes] = []

    def blob(value: bytes) -> int:
        blobs.append(value)
        return len(blobs) + 1  # ARGV[1] is the table

    equal: list[list[Any]] = []
    absent: list[list[Any]] = []
    if w.assumed is not None:
        for key, value in w.assumed.equal.items():
            keys.append(key)
            equal.append([key, 0 if value is None else blob(value)])
        for key, members in w.assumed.absent.items():
            keys.append(key)
            absent.append([key, members])
    zadd: list[list[Any]] = []
    adds: dict[str, tuple[Mapping[str, float], float | None]] = {}
    if w.new_seen:
        adds[w.seen] = (w.new_seen, DEDUPE_HORIZON_S)
    for key, add in c.zadd.items():
        adds[key] = (add.members, add.horizon_s)
    for key, (scores, horizon) in adds.items():
        cutoff = None if horizon is None else prune_cutoff(scores.values(), horizon, now)
        zadd.append([key, scores, "" if cutoff is None else repr(cutoff)])
    hincr: list[list[Any]] = []
    for key, increments in c.hincr.items():
        flat: list[str] = []
        for f, n in increments.items():
            if n:
                flat += (f, str(n))
        at = c.expireat.get(key)
        hincr.append([key, flat, "" if at is None else str(at)])
    for key, at in c.expireat.items():
        if key not in c.hincr:
            hincr.append([key, [], str(at)])
    table = {
        "offsets": w.offsets,
        "expected": {f: str(o) for f, o in w.expected.items()},
        "new": {f: str(o) for f, o in w.new.items()},
        "equal": equal,
        "absent": absent,
        "set": [[key, blob(value)] for key, value in c.set.items()],
        "zadd": zadd,
        "zrem": [[key, list(members)] for key, members in c.zrem.items()],
        "hincr": hincr,
    }
    keys += [*c.set, *c.zadd, *c.zrem, *c.hincr]
    return list(dict.fromkeys(keys)), [orjson.dumps(table), *blobs]


class RedisStateStore:
    """The engine's view of Redis (see the module docstring)."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self._read = redis.register_script(_READ_LUA)
        self._write = redis.register_script(_WRITE_LUA)
        self._restore = redis.register_script(_RESTORE_LUA)
        self._bulk_hashes = redis.register_script(_BULK_HASHES_LUA)

    async def load(self, requests: Mapping[str, LoadRequest]) -> dict[str, Loaded]:
        """Read every experiment of a batch in one round trip."""
        if not requests:
            return {}
        calls = []
        for req in requests.values():
            reads = req.reads
            sets = [[req.seen, list(reads.seen)]]
            sets += [[key, list(members)] for key, members in reads.members.items()]
            table = {"offsets": req.offsets, "get": list(reads.get), "sets": sets}
            keys = [req.offsets, req.seen, *reads.get, *reads.members]
            calls.append(ScriptCall(self._read, keys, [orjson.dumps(table)]))
        replies = await run_scripts(self.redis, calls)
        out: dict[str, Loaded] = {}
        for (exp, req), reply in zip(requests.items(), replies, strict=True):
            flat, values, found = reply
            reads = req.reads
            asked = [reads.seen, *reads.members.values()]
            hits = [
                {
                    asked[s][int(i) - 1]: float(score)
                    for i, score in zip(f[::2], f[1::2], strict=True)
                }
                for s, f in enumerate(found)
            ]
            out[exp] = Loaded(
                offsets={_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)},
                values=dict(zip(reads.get, values, strict=True)),
                seen=hits[0],
                found=dict(zip(reads.members, hits[1:], strict=True)),
            )
        return out

    async def write(self, writes: Sequence[Write], now: float) -> list[str]:
        """Apply every compare-and-set write in one round trip; the ids refused. The
        channels the changes name are published to for every write, refused or not (a
        reader reloading for nothing is harmless)."""
        if not writes:
            return []
        calls = []
        publish: list[tuple[str, str]] = []
        for w in writes:
            keys, args = write_args(w, now)
            calls.append(ScriptCall(self._write, keys, args))
            publish += w.changes.publish
        replies = await run_scripts(self.redis, calls, publish=publish)
        return [w.experiment_id for w, r in zip(writes, replies, strict=True) if int(r[0]) != 1]

    # ----------------------------------------------------------------- replay
    async def restore(
        self,
        experiment_id: str,
        state: MemoryStateStore,
        keys: Sequence[str],
        now: float,
        *,
        chunk: int = 25_000,
    ) -> None:
        """Write one experiment's ``keys`` of ``state`` into an empty target.

        Sorted sets and hashes other than offsets first, in bulk (pruned as the live
        processors would have), then the strings and the offsets hashes in one script
        that refuses if any offsets hash exists: whoever sees the offsets sees every key
        they depend on. Bulk because the live scripts cost Redis ~3x more per member
        (``HINCRBY`` per field, ``cjson`` over a million dedupe keys): Redis is the
        single-threaded part of a replay. Raises ``RuntimeError`` when the target of an
        experiment is not empty.
        """
        offsets = [k for k in keys if k in state.offsets_keys]
        if offsets and await self.redis.exists(*offsets):
            raise RuntimeError(f"replay target of {experiment_id!r} was not empty")
        hashes: list[list[str]] = []
        for key in keys:
            if key in state.zsets:
                await bulk_zadd(self.redis, key, state.pruned(key, now), chunk)
            elif key in state.hashes and key not in state.offsets_keys:
                at = state.expire_at.get(key)
                entry = [key, "" if at is None else str(at)]
                for f, n in state.hashes[key].items():
                    entry += (f, str(n))
                if len(entry) > 2:
                    hashes.append(entry)
        await self._bulk_hash_calls(hashes)
        blobs: list[bytes] = []
        sets: list[list[Any]] = []
        for key in keys:
            if key in state.strings:
                blobs.append(state.strings[key])
                sets.append([key, len(blobs) + 1])
        table = {
            "offsets": offsets,
            "set": sets,
            "hashes": [[k, {f: str(o) for f, o in state.hashes[k].items()}] for k in offsets],
        }
        route = [*offsets, *(s[0] for s in sets)] or list(keys[:1])
        reply = await self._restore(keys=route, args=[orjson.dumps(table), *blobs])
        if int(reply[0]) != 1:
            raise RuntimeError(f"replay target of {experiment_id!r} was not empty")

    async def _bulk_hash_calls(self, hashes: list[list[str]], per_call: int = 2_000) -> None:
        """Hashes into an empty target: one ``HSET`` of all fields and one ``EXPIREAT``
        each, ``per_call`` hashes per JSON argument (a redis-py pipeline spends ~50 us of
        Python per command; an experiment has thousands of buckets)."""
        for lo in range(0, len(hashes), per_call):
            part = hashes[lo : lo + per_call]
            await self._bulk_hashes(keys=[part[0][0]], args=[orjson.dumps(part)])


@contextlib.asynccontextmanager
async def _connection_for(redis: AnyRedis, key: str) -> AsyncIterator[Connection]:
    """A connection of the client's pool to the node holding ``key`` (the node, or on a
    cluster the master of the key's slot), given back afterwards; disconnected first if
    the caller failed, when a reply may be left unread on it."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the slot table; a no-op once the client is set up
        node = redis.get_node_from_key(key)
        if node is None:  # only asked for a replica returns None; typed Optional anyway
            raise RuntimeError(f"no cluster node holds {key!r}")
        conn = node.acquire_connection()
        try:
            yield conn
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)
        return
    pool = redis.connection_pool
    single: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        yield single
    except BaseException:
        await single.disconnect()
        raise
    finally:
        await pool.release(single)


async def bulk_zadd(redis: AnyRedis, key: str, members: Mapping[str, float], chunk: int) -> None:
    """``ZADD key`` every member with its score, ``chunk`` members per command.

    Replay's bulk loader of dedupe sets (a million members for a million events), into
    the node that holds ``key``. Each command is packed by hiredis (C, ~0.4 us a member;
    redis-py's asyncio packer takes ~2.2 us) and sent on a connection of the pool (on a
    cluster, of the key's master: a slot that moves meanwhile fails the load with
    ``MOVED``, and the rebuild with it, leaving the live keys untouched). Redis is the
    single-threaded part of replay, and plain ``ZADD`` arguments cost it ~2 us a
    member, against ~5.6 us when a Lua script ``cjson``-decoded one JSON argument and
    called ``ZADD`` over slices of it (1,000,000 members, back to back: Redis 2.0-2.2 s
    against 5.6-6.5 s). Scores go as ``repr`` strings, which Redis parses back to the
    same double.
    """
    if not members:
        return
    async with _connection_for(redis, key) as conn:
        in_flight = False

        async def send(args: list[str]) -> None:
            """Send one command, after reading the reply of the previous one: Redis runs
            a chunk while the next is built (an error reply raises in ``read_response``)."""
            nonlocal in_flight
            # hiredis's stub types the argument as a 1-tuple; it takes any length.
            packed = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
            if in_flight:
                await conn.read_response()
            await conn.send_packed_command(packed)
            in_flight = True

        flat: list[str] = ["ZADD", key]
        push = flat.append
        last: float | None = None
        text = ""
        for member, score in members.items():
            if score is not last:  # a reward's keys share one ts object: one repr for both
                last, text = score, repr(score)
            push(text)
            push(member)
            if len(flat) >= 2 + 2 * chunk:
                await send(flat)
                flat = ["ZADD", key]
                push = flat.append
        if len(flat) > 2:
            await send(flat)
        if in_flight:
            await conn.read_response()

"""The Redis side of ``mab replay``: read a namespace's state, compare two, swap one in.

A namespace is a Redis key prefix (:class:`schemas.redis_keys.RedisKeys`). Replay builds
its state under a scratch prefix; the scratch keys of an experiment carry the same
``{<encoded experiment id>}`` hash tag as the live ones, so both lie in one slot and one
``MULTI`` can swap them, on a single node and on a Redis Cluster alike. Every command
here names keys of one experiment only (reads, bulk loads, the swap), or one key (the
experiments index); ``SCAN`` and multi-key ``UNLINK`` go through the cluster client,
which scans every master and splits keys by slot.

What is compared, and what is normalised first (everything else must be equal):

* config: as an :class:`~schemas.events.ExperimentConfig` (the decider's Lua scripts and
  ``model_dump_json`` spell the same config with different bytes);
* snapshot: as parsed JSON (an arm's position in the JSON object depends on which
  event first touched it, which differs when two topics are read in another
  interleaving; the values do not);
* dedupe sets (``seen``, ``proj:seen``): only members within the dedupe horizon of the
  newest one. The live processors prune at every write with a cutoff taken from that
  batch, so a member older than the horizon may linger live until the next prune; it
  can never decide a duplicate again, and replay prunes once at the end;
* bucket hashes, offsets hashes, change points, the experiments index: exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from pydantic import ValidationError

from bandit_core.fold import DEDUPE_HORIZON_S
from schemas.events import ExperimentConfig
from schemas.ids import key_segment
from schemas.redis_keys import RedisKeys
from stream_runtime.redis_client import AnyRedis

#: Key kinds replay rebuilds (the suffix after ``mab:{E}:``; buckets by their prefix).
HASH_KINDS: Final = frozenset({"offsets", "proj:offsets"})
DEDUPE_KINDS: Final = frozenset({"seen", "proj:seen"})
BUCKET_PREFIX: Final = "ts:"
MAX_READ_ATTEMPTS: Final = 5


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def split_key(prefix: str, key: str) -> tuple[str, str] | None:
    """``(experiment id, kind)`` of an experiment key under ``prefix``, else ``None``."""
    return RedisKeys(prefix).split(key)


@dataclass(slots=True)
class Namespace:
    """All replay-managed keys of one prefix, normalised for comparison."""

    prefix: str
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)  # exp -> kind -> value
    index: dict[str, float] = field(default_factory=dict)


async def scan_keys(redis: AnyRedis, prefix: str) -> dict[str, list[str]]:
    """Experiment id -> its keys under ``prefix`` (one SCAN over the namespace; on a
    cluster over every master)."""
    out: dict[str, list[str]] = {}
    async for raw in redis.scan_iter(match=prefix + "mab:*", count=1000):
        key = _text(raw)
        parts = split_key(prefix, key)
        if parts is not None:
            out.setdefault(parts[0], []).append(key)
    return out


def _zset(flat: Iterable[Any]) -> dict[str, float]:
    """A ``ZRANGE ... WITHSCORES`` reply (pairs of member and score) as a dict."""
    return {_text(m): float(s) for m, s in flat}


def within_horizon(members: Mapping[str, float], now: float | None = None) -> dict[str, float]:
    """Members no older than the dedupe horizon before the newest (clamped to now)."""
    if not members:
        return {}
    newest = min(max(members.values()), time.time() if now is None else now)
    cutoff = newest - DEDUPE_HORIZON_S
    return {m: s for m, s in members.items() if s >= cutoff}


def _normal_config(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return ExperimentConfig.model_validate_json(raw).model_dump(mode="json")
    except ValidationError:
        return {"unreadable": _text(raw)}


def _normal_snapshot(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"unreadable": _text(raw)}


async def _read_experiment(redis: AnyRedis, prefix: str, keys: list[str]) -> dict[str, Any]:
    """One experiment's keys in one MULTI (atomic against the processors' Lua writes;
    on a cluster too, as they share the experiment's slot)."""
    kinds: list[str] = []
    async with redis.pipeline(transaction=True) as pipe:
        for key in keys:
            parts = split_key(prefix, key)
            assert parts is not None
            kind = parts[1]
            kinds.append(kind)
            if kind in ("config", "snap"):
                pipe.get(key)
            elif kind in HASH_KINDS or kind.startswith(BUCKET_PREFIX):
                pipe.hgetall(key)
            else:  # seen, proj:seen, proj:cp and anything else zset-like
                pipe.type(key)
        replies = await pipe.execute()
    out: dict[str, Any] = {}
    zsets: list[str] = []
    for key, kind, reply in zip(keys, kinds, replies, strict=True):
        if kind == "config":
            out[kind] = _normal_config(reply)
        elif kind == "snap":
            out[kind] = _normal_snapshot(reply)
        elif kind in HASH_KINDS or kind.startswith(BUCKET_PREFIX):
            out[kind] = {_text(k): _text(v) for k, v in reply.items()}
        elif _text(reply) == "zset":
            zsets.append(key)
        else:
            out[kind] = {"type": _text(reply)}
    if zsets:
        # Dedupe sets only grow between prunes and change points are idempotent, so a
        # second step reading them is safe for comparison purposes.
        async with redis.pipeline(transaction=True) as pipe:
            for key in zsets:
                pipe.zrange(key, 0, -1, withscores=True)
            replies = await pipe.execute()
        for key, reply in zip(zsets, replies, strict=True):
            parts = split_key(prefix, key)
            assert parts is not None
            members = _zset(reply)
            out[parts[1]] = within_horizon(members) if parts[1] in DEDUPE_KINDS else members
    return out


async def read_namespace(redis: AnyRedis, prefix: str) -> Namespace:
    """Every replay-managed key of ``prefix``; re-read experiments whose key set moved.

    A live processor may create a bucket between the SCAN and the read; a second SCAN
    that lists a different key set for an experiment makes us read it again.
    """
    ns = Namespace(prefix)
    keys = await scan_keys(redis, prefix)
    pending = dict(keys)
    for _ in range(MAX_READ_ATTEMPTS):
        for exp, ks in pending.items():
            ns.experiments[exp] = await _read_experiment(redis, prefix, sorted(ks))
        again = await scan_keys(redis, prefix)
        pending = {e: ks for e, ks in again.items() if sorted(ks) != sorted(keys.get(e, []))}
        keys = again
        if not pending:
            break
    for exp in list(ns.experiments):
        if exp not in keys:
            del ns.experiments[exp]
    ns.index = _zset(await redis.zrange(RedisKeys(prefix).index, 0, -1, withscores=True))
    return ns


def stops_of(ns: Namespace, kind: str) -> dict[str, dict[str, int]]:
    """Per experiment, the offsets stored with its state (``offsets``/``proj:offsets``)."""
    return {
        exp: {f: int(o) for f, o in kinds[kind].items()}
        for exp, kinds in ns.experiments.items()
        if kind in kinds
    }


def _diff_value(path: str, a: Any, b: Any, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}/{k}: only in replay = {_short(b[k])}")
            elif k not in b:
                out.append(f"{path}/{k}: only live = {_short(a[k])}")
            elif a[k] != b[k]:
                _diff_value(f"{path}/{k}", a[k], b[k], out, limit)
            if len(out) >= limit:
                return
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                _diff_value(f"{path}[{i}]", x, y, out, limit)
        return
    out.append(f"{path}: live {_short(a)} != replay {_short(b)}")


def _short(v: Any) -> str:
    text = orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def compare(live: Namespace, replay: Namespace, limit: int = 200) -> list[str]:
    """Human-readable differences between two namespaces (empty: identical)."""
    out: list[str] = []
    for exp in sorted(set(live.experiments) | set(replay.experiments)):
        a = live.experiments.get(exp, {})
        b = replay.experiments.get(exp, {})
        for kind in sorted(set(a) | set(b)):
            key = f"mab:{{{key_segment(exp)}}}:{kind}"
            if kind not in b:
                out.append(f"{key}: only live")
            elif kind not in a:
                out.append(f"{key}: only in replay")
            elif a[kind] != b[kind]:
                _diff_value(key, a[kind], b[kind], out, limit)
            if len(out) >= limit:
                return [*out, "... (more differences not shown)"]
    if live.index != replay.index:
        _diff_value("mab:experiments", live.index, replay.index, out, limit)
    return out


async def delete_namespace(redis: AnyRedis, prefix: str) -> int:
    """Unlink every key under ``prefix`` (the scratch namespace after a replay)."""
    removed = 0
    batch: list[str] = []
    async for raw in redis.scan_iter(match=prefix + "mab:*", count=1000):
        batch.append(_text(raw))
        if len(batch) >= 1000:
            removed += await redis.unlink(*batch)
            batch = []
    if batch:
        removed += await redis.unlink(*batch)
    return removed


async def write_configs(
    redis: AnyRedis, prefix: str, configs: Mapping[str, ExperimentConfig]
) -> None:
    """Config keys and the experiments index, as the decider's create writes them."""
    if not configs:
        return
    keys = RedisKeys(prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for exp, config in configs.items():
            pipe.set(keys.experiment(exp).config, config.model_dump_json())
        pipe.zadd(keys.index, {e: c.created_ts for e, c in configs.items()})
        await pipe.execute()


async def swap_in(redis: AnyRedis, live_prefix: str, scratch_prefix: str) -> list[str]:
    """Make the scratch state live, one experiment per ``MULTI`` (delete, then rename).

    Per experiment the switch is atomic: a processor's Lua script runs entirely before
    or entirely after it, sees either the old keys or the rebuilt ones with their
    offsets, and its compare-and-set fails if the offsets it read moved. The scratch
    and live keys of an experiment share its hash tag, so on a cluster the ``MULTI``
    and each ``RENAME`` stay in one slot. Returns the experiments swapped in.
    """
    scratch = await scan_keys(redis, scratch_prefix)
    live = await scan_keys(redis, live_prefix)
    for exp, keys in sorted(scratch.items()):
        async with redis.pipeline(transaction=True) as pipe:
            old = live.get(exp, [])
            if old:
                pipe.delete(*old)
            for key in keys:
                # Not pipe.rename(): redis-py blocks it in every cluster pipeline as a
                # multi-key command; the transaction itself checks the one slot (and
                # Redis refuses a cross-slot RENAME with CROSSSLOT anyway).
                pipe.execute_command("RENAME", key, live_prefix + key[len(scratch_prefix) :])
            await pipe.execute()
    scratch_index, live_index = RedisKeys(scratch_prefix).index, RedisKeys(live_prefix).index
    index = _zset(await redis.zrange(scratch_index, 0, -1, withscores=True))
    if index:
        # Two keys of two slots: merged by two commands (members are only ever added).
        await redis.zadd(live_index, dict(index))
        await redis.delete(scratch_index)
    return sorted(scratch)


def experiments_without_topic(ns: Namespace, configs: Iterable[str]) -> list[str]:
    """Experiments with keys in ``ns`` but no config in the experiments topic."""
    known = set(configs)
    return sorted(e for e in ns.experiments if e not in known)

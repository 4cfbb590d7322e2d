"""Redis access of the decider: experiment configs (the registry) and snapshot reads.

The config key of an experiment holds the JSON of :class:`schemas.events.ExperimentConfig`
and is written only by the three command scripts below. Each script reads, checks and
writes that one key atomically, so concurrent creates cannot both win and concurrent
add-arms cannot lose an arm (the original project's read-modify-write in Python lost both). Every
script touches only the keys of one experiment (one hash tag, one Cluster slot).

The events are built from the JSON a script returns, never from a Python-side copy, so
Redis and the log always hold the same config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis.commands.core import AsyncScript

from schemas.events import ExperimentConfig
from schemas.redis_keys import BUCKET_SECONDS, BucketKind, RedisKeys
from stream_runtime.redis_client import AnyRedis

# KEYS[1] config; ARGV[1] config JSON. SET NX in a script for symmetry with the others.
_CREATE: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end
return 0
"""

# Shared by the two update scripts. cjson re-encodes numbers with only 14 significant
# digits (a 2**62 seed or a microsecond timestamp would silently change), so the new
# JSON is spliced together from the stored *text* of the numeric fields, in the field
# order pydantic writes; cjson only decodes (ids, version) and encodes strings/arrays of
# ids, which is exact. A config written in another layout still works via the fallback.
_LUA_HELPERS: Final = """
local function field_raw(raw, name, next_name)
  local key = '"' .. name .. '":'
  local s = string.find(raw, key, 1, true)
  if not s then return nil end
  local e = string.find(raw, ',"' .. next_name .. '":', s, true)
  if not e then return nil end
  return string.sub(raw, s + #key, e - 1)
end
-- The text of a scalar field (a number or null: no ',' or '}' inside), or nil.
local function scalar_raw(raw, name)
  local key = '"' .. name .. '":'
  local s = string.find(raw, key, 1, true)
  if not s then return nil end
  local e = string.find(raw, '[,}]', s + #key)
  if not e then return nil end
  return string.sub(raw, s + #key, e - 1)
end
-- The assignment settings (schemas.events.ExperimentConfig, after default_reward, in
-- its field order), each kept as stored unless ``over`` (ttl, floor, interval: JSON
-- text; the mode is set on cfg) replaces it; a config stored before they existed has none
-- and keeps none (it reads with the defaults and its experiment id as salt). Strings
-- through cjson (exact for strings), numbers and null as their stored text.
local function assignment_tail(cfg, raw, over)
  local out = ''
  if type(cfg.assignment) == 'string' then
    out = out .. ',"assignment":' .. cjson.encode(cfg.assignment)
  end
  local ttl = over.ttl or scalar_raw(raw, 'sticky_ttl_s')
  if ttl then out = out .. ',"sticky_ttl_s":' .. ttl end
  if type(cfg.unit_id_storage) == 'string' then
    out = out .. ',"unit_id_storage":' .. cjson.encode(cfg.unit_id_storage)
  end
  if type(cfg.salt) == 'string' then out = out .. ',"salt":' .. cjson.encode(cfg.salt) end
  local floor = over.floor or scalar_raw(raw, 'min_arm_share')
  if floor then out = out .. ',"min_arm_share":' .. floor end
  local interval = over.interval or scalar_raw(raw, 'allocation_interval_s')
  if interval then out = out .. ',"allocation_interval_s":' .. interval end
  return out
end
-- The reward settings (after the assignment settings, in ExperimentConfig's field order),
-- fixed at creation: kept as stored; a config stored before they existed has none and
-- keeps none (it reads as binary).
local function reward_tail(cfg, raw)
  local out = ''
  if type(cfg.reward_type) == 'string' then
    out = out .. ',"reward_type":' .. cjson.encode(cfg.reward_type)
  end
  local cap = scalar_raw(raw, 'reward_cap')
  if cap then out = out .. ',"reward_cap":' .. cap end
  return out
end

-- The holdout and stopping settings (after the reward settings, in ExperimentConfig's
-- field order), fixed at creation: kept as stored; a config stored before they existed
-- has none and keeps none (no holdout, default thresholds).
local function holdout_tail(cfg, raw)
  local out = ''
  if type(cfg.control_arm_id) == 'string' then
    out = out .. ',"control_arm_id":' .. cjson.encode(cfg.control_arm_id)
  elseif cfg.control_arm_id == cjson.null then
    out = out .. ',"control_arm_id":null'
  end
  for _, name in ipairs({'holdout_share', 'stop_probability', 'stop_expected_loss',
                         'route_to_winner'}) do
    local value = scalar_raw(raw, name)
    if value then out = out .. ',"' .. name .. '":' .. value end
  end
  return out
end

-- The guardrail settings (the last fields of ExperimentConfig, from "metrics" on), fixed
-- at creation: their stored text is kept verbatim (its numbers exact); a config stored
-- before they existed has none and keeps none (it reads without guardrails). The last
-- ',"metrics":' is the setting: strategy_params, before it, may hold the same key.
local function guardrail_tail(raw)
  local key = ',"metrics":['
  local s, at = nil, 1
  while true do
    local found = string.find(raw, key, at, true)
    if not found then break end
    s, at = found, found + 1
  end
  if not s then return '' end
  return string.sub(raw, s, #raw - 1)
end

local function build(cfg, raw, params_raw, now, window_raw, default_raw, over)
  params_raw = params_raw or field_raw(raw, 'strategy_params', 'version')
    or cjson.encode(cfg.strategy_params)
  local created_raw = field_raw(raw, 'created_ts', 'updated_ts') or cjson.encode(cfg.created_ts)
  window_raw = window_raw or scalar_raw(raw, 'attribution_window_s') or 'null'
  default_raw = default_raw or scalar_raw(raw, 'default_reward') or '0.0'
  return '{"experiment_id":' .. cjson.encode(cfg.experiment_id)
    .. ',"arm_ids":' .. cjson.encode(cfg.arm_ids)
    .. ',"strategy":' .. cjson.encode(cfg.strategy)
    .. ',"strategy_params":' .. params_raw
    .. ',"version":' .. string.format('%d', cfg.version)
    .. ',"created_ts":' .. created_raw
    .. ',"updated_ts":' .. now
    .. ',"attribution_window_s":' .. window_raw
    .. ',"default_reward":' .. default_raw
    .. assignment_tail(cfg, raw, over or {}) .. reward_tail(cfg, raw)
    .. holdout_tail(cfg, raw) .. guardrail_tail(raw) .. '}'
end
"""


def _config_update(body: str) -> str:
    """An update script of the config at ``KEYS[1]``: the helpers; the stored config as
    ``raw`` (its text) and ``cfg`` (decoded), or ``{'missing'}``; then ``body``, which
    computes the new text ``out`` (or returns early); then its ``SET`` and ``{'ok', out,
    raw}``."""
    return (
        _LUA_HELPERS
        + """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'missing'} end
local cfg = cjson.decode(raw)
"""
        + body.removeprefix("\n")
        + """redis.call('SET', KEYS[1], out)
return {'ok', out, raw}
"""
    )


# KEYS[1] config; ARGV[1] JSON list of new arms, ARGV[2] max arms, ARGV[3] now.
# Returns {'ok', new_json, previous_json} | {'missing'} | {'exists', json list} |
# {'too_many', current count} | {'floor', min_arm_share text}.
_ADD_ARMS: Final = _config_update(
    """
local new = cjson.decode(ARGV[1])
local present = {}
for _, a in ipairs(cfg.arm_ids) do present[a] = true end
local dup = {}
for _, a in ipairs(new) do
  if present[a] then dup[#dup + 1] = a end
end
if #dup > 0 then return {'exists', cjson.encode(dup)} end
if #cfg.arm_ids + #new > tonumber(ARGV[2]) then return {'too_many', tostring(#cfg.arm_ids)} end
-- The traffic floor must still fit: k * min_arm_share <= 1 (ExperimentConfig's check,
-- with its slack), refused here so that no config beyond it is ever stored.
local floor_raw = scalar_raw(raw, 'min_arm_share')
local floor = tonumber(floor_raw or '0') or 0
if (#cfg.arm_ids + #new) * floor > 1 + 1e-9 then return {'floor', floor_raw} end
for _, a in ipairs(new) do cfg.arm_ids[#cfg.arm_ids + 1] = a end
cfg.version = cfg.version + 1
local out = build(cfg, raw, nil, ARGV[3])
"""
)

# KEYS[1] config; ARGV[1] strategy, ARGV[2] params JSON object, ARGV[3] now, ARGV[4]
# attribution window JSON (a number or null; '' keeps it), ARGV[5] default reward ('' keeps),
# ARGV[6] assignment mode, ARGV[7] sticky TTL (a number or null), ARGV[8] min_arm_share,
# ARGV[9] allocation interval ('' keeps each), ARGV[10] the reward types the new strategy
# learns from (comma-separated).
# Returns {'ok', new_json, previous_json} | {'missing'} | {'floor', min_arm_share text} |
# {'reward_type', the experiment's reward type}.
_SET_STRATEGY: Final = _config_update(
    """
-- The new strategy must learn from the experiment's reward type (fixed at creation; a
-- config stored before reward types existed is binary), checked against the stored
-- config in the same step that writes it.
local rtype = cfg.reward_type
if type(rtype) ~= 'string' then rtype = 'binary' end
if not string.find(',' .. ARGV[10] .. ',', ',' .. rtype .. ',', 1, true) then
  return {'reward_type', rtype}
end
cfg.strategy = ARGV[1]
cfg.version = cfg.version + 1
local window = nil
if ARGV[4] ~= '' then window = ARGV[4] end
local default = nil
if ARGV[5] ~= '' then default = ARGV[5] end
if ARGV[6] ~= '' then cfg.assignment = ARGV[6] end
local over = {}
if ARGV[7] ~= '' then over.ttl = ARGV[7] end
if ARGV[8] ~= '' then
  -- The new floor must fit the arms stored now (ExperimentConfig's check, its slack).
  if #cfg.arm_ids * tonumber(ARGV[8]) > 1 + 1e-9 then return {'floor', ARGV[8]} end
  over.floor = ARGV[8]
end
if ARGV[9] ~= '' then over.interval = ARGV[9] end
local out = build(cfg, raw, ARGV[2], ARGV[3], window, default, over)
"""
)

# Compensation when the event could not be logged. KEYS[1] config; ARGV[1] the JSON we
# wrote, ARGV[2] the JSON to restore ('' = delete). Only if nobody wrote since (CAS on
# the exact bytes), so a later accepted command is never undone.
_ROLLBACK: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class AttributionChange:
    """Attribution fields a ``POST /config`` sets; ``keep_*`` leaves the stored value."""

    window_s: float | None = None
    keep_window: bool = True
    default_reward: float | None = None

    def lua_args(self) -> list[str]:
        window = "" if self.keep_window else orjson.dumps(self.window_s).decode()
        default = "" if self.default_reward is None else repr(float(self.default_reward))
        return [window, default]


@dataclass(frozen=True, slots=True)
class UnitsChange:
    """Assignment settings a ``POST /config`` sets; ``None`` (``keep_ttl`` for the TTL,
    whose ``None`` means "the experiment's life") leaves the stored value."""

    assignment: str | None = None
    sticky_ttl_s: int | None = None
    keep_ttl: bool = True
    min_arm_share: float | None = None
    allocation_interval_s: int | None = None

    def lua_args(self) -> list[str]:
        ttl = "" if self.keep_ttl else orjson.dumps(self.sticky_ttl_s).decode()
        floor = "" if self.min_arm_share is None else repr(float(self.min_arm_share))
        interval = "" if self.allocation_interval_s is None else str(self.allocation_interval_s)
        return [self.assignment or "", ttl, floor, interval]


def now_ts() -> float:
    return time.time()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class ExperimentMissingError(LookupError):
    pass


class ArmsExistError(ValueError):
    def __init__(self, arm_ids: list[str]) -> None:
        super().__init__(f"arms already present: {arm_ids}")
        self.arm_ids = arm_ids


class TooManyArmsError(ValueError):
    def __init__(self, current: int) -> None:
        super().__init__(f"too many arms (experiment has {current})")
        self.current = current


class FloorTooHighError(ValueError):
    """Adding arms would make the traffic floors exceed the whole traffic."""

    def __init__(self, min_arm_share: float) -> None:
        super().__init__(f"min_arm_share {min_arm_share} does not fit the new arm count")
        self.min_arm_share = min_arm_share


class RewardTypeError(ValueError):
    """The new strategy does not learn from the experiment's (resulting) reward type."""

    def __init__(self, reward_type: str) -> None:
        super().__init__(f"strategy cannot learn from {reward_type} rewards")
        self.reward_type = reward_type


@dataclass(frozen=True, slots=True)
class TimeseriesRead:
    """The raw projector data of one experiment and range, read in one round trip."""

    config_raw: bytes | None
    buckets: list[tuple[int, dict[bytes, bytes]]]  # (bucket start, HGETALL), empty skipped
    change_points: list[tuple[bytes, float]]  # (member, ts)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A config written by a command script, with what is needed to undo it."""

    config: ExperimentConfig
    raw: str  # the exact JSON now stored
    previous_raw: str  # '' for a create


class ConfigStore:
    """Typed wrapper around the command scripts and the reads of the decider."""

    def __init__(self, redis: AnyRedis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._create: AsyncScript = redis.register_script(_CREATE)
        self._add_arms: AsyncScript = redis.register_script(_ADD_ARMS)
        self._set_strategy: AsyncScript = redis.register_script(_SET_STRATEGY)
        self._rollback: AsyncScript = redis.register_script(_ROLLBACK)

    async def create(self, config: ExperimentConfig) -> CommandResult | None:
        """Store a new config; ``None`` when the experiment already exists."""
        raw = config.model_dump_json()
        ok = await self._create(
            keys=[self.keys.experiment(config.experiment_id).config], args=[raw]
        )
        if not int(ok):
            return None
        return CommandResult(config, raw, "")

    async def add_to_index(self, config: ExperimentConfig) -> None:
        """List membership lives in its own key (own slot), hence not in the script."""
        await self.redis.zadd(self.keys.index, {config.experiment_id: config.created_ts}, nx=True)

    async def remove_from_index(self, experiment_id: str) -> None:
        await self.redis.zrem(self.keys.index, experiment_id)

    async def add_arms(
        self, experiment_id: str, arm_ids: list[str], max_arms: int
    ) -> CommandResult:
        res = await self._add_arms(
            keys=[self.keys.experiment(experiment_id).config],
            args=[orjson.dumps(arm_ids), max_arms, repr(now_ts())],
        )
        return self._result(res)

    async def set_strategy(
        self,
        experiment_id: str,
        strategy: str,
        params: dict[str, Any],
        attribution: AttributionChange | None = None,
        units: UnitsChange | None = None,
        reward_types: frozenset[str] = frozenset({"binary"}),
    ) -> CommandResult:
        """Swap strategy and params; ``attribution`` and ``units`` change the fields given.
        ``reward_types``: what the new strategy learns from (its ``reward_types``); the
        script refuses the swap (:class:`RewardTypeError`) unless the experiment's reward
        type is among them."""
        change = attribution or AttributionChange()
        res = await self._set_strategy(
            keys=[self.keys.experiment(experiment_id).config],
            args=[
                strategy,
                orjson.dumps(params),
                repr(now_ts()),
                *change.lua_args(),
                *(units or UnitsChange()).lua_args(),
                ",".join(sorted(reward_types)),
            ],
        )
        return self._result(res)

    def _result(self, res: list[Any]) -> CommandResult:
        status = _text(res[0])
        if status == "ok":
            raw = _text(res[1])
            return CommandResult(ExperimentConfig.model_validate_json(raw), raw, _text(res[2]))
        if status == "missing":
            raise ExperimentMissingError
        if status == "exists":
            raise ArmsExistError(orjson.loads(res[1]))
        if status == "too_many":
            raise TooManyArmsError(int(res[1]))
        if status == "floor":
            raise FloorTooHighError(float(res[1]))
        if status == "reward_type":
            raise RewardTypeError(_text(res[1]))
        raise RuntimeError(f"unexpected script reply {res!r}")  # pragma: no cover

    async def rollback(self, experiment_id: str, result: CommandResult) -> bool:
        """Undo ``result`` if the config is still exactly what it wrote."""
        done = await self._rollback(
            keys=[self.keys.experiment(experiment_id).config],
            args=[result.raw, result.previous_raw],
        )
        return bool(int(done))

    async def get_config(self, experiment_id: str) -> ExperimentConfig | None:
        raw = await self.redis.get(self.keys.experiment(experiment_id).config)
        return None if raw is None else ExperimentConfig.model_validate_json(raw)

    async def get_config_and_snapshot(
        self, experiment_id: str
    ) -> tuple[bytes | None, bytes | None]:
        """One round trip (same hash slot): the raw config and snapshot blobs."""
        keys = self.keys.experiment(experiment_id)
        config_raw, snap_raw = await self.redis.mget([keys.config, keys.snapshot])
        return _bytes(config_raw), _bytes(snap_raw)

    async def list_configs(self, offset: int, limit: int) -> list[ExperimentConfig]:
        """Configs in creation order. One pipeline, not MGET: the keys span slots."""
        ids = await self.redis.zrange(self.keys.index, offset, offset + limit - 1)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for exp_id in ids:
                pipe.get(self.keys.experiment(_text(exp_id)).config)
            raws = await pipe.execute()
        return [ExperimentConfig.model_validate_json(r) for r in raws if r is not None]

    async def read_timeseries(
        self, experiment_id: str, kind: BucketKind, lo: int, hi: int
    ) -> TimeseriesRead:
        """Config, one HGETALL per bucket in ``[lo, hi)`` and the change points with
        ``lo <= ts < hi``, pipelined in one round trip (all keys share the hash tag)."""
        keys = self.keys.experiment(experiment_id)
        starts = list(range(lo, hi, BUCKET_SECONDS[kind]))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.config)
            for start in starts:
                pipe.hgetall(keys.bucket(kind, start))
            pipe.zrangebyscore(keys.change_points, lo, f"({hi}", withscores=True)
            replies = await pipe.execute()
        config_raw = _bytes(replies[0])
        buckets = [(s, r) for s, r in zip(starts, replies[1:-1], strict=True) if r]
        return TimeseriesRead(config_raw, buckets, [(m, float(t)) for m, t in replies[-1]])

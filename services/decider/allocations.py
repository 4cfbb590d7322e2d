"""The allocation store: one record per (experiment, epoch), the same on every worker.

The sticky and consistent modes draw a new unit's arm from the current allocation, and
an SDK deciding locally reports exposures against the version it used; all of them must
see *the same* weights for a version, or one unit could get two arms and a logged
propensity would be wrong. Each worker's cached propensities differ (Monte Carlo for
Thompson, snapshots a few hundred milliseconds apart), so the first worker that needs
epoch ``v`` stores its weights with ``SET key value NX GET EX retention``: the write
wins only if the key is absent, and a loser gets the winner's value back in the same
round trip and uses it. After that, a version never changes until it expires.

A record is immutable once stored, so each worker memoises it (:meth:`memoized`), and
the hot paths ask Redis about an experiment once per epoch, not per request. The memo
forgets a record when Redis does (``computed_at + retention``), so a version past its
retention is unknown here too.

The weights are the decision cache entry's ``propensities`` (what ``GET /decision``
logs: closed form, or Thompson's Monte Carlo estimate) scaled to sum to 1, after the
experiment's traffic floor (:func:`bandit_core.allocation.apply_floor`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bandit_core.allocation import (
    AllocationRecord,
    apply_floor,
    normalized,
    valid_until,
    version_at,
)
from bandit_core.holdout import with_holdout
from schemas.events import ExperimentConfig
from schemas.redis_keys import RedisKeys
from services.decider.decisions import CachedExperiment, DecisionCache
from stream_runtime.redis_client import AnyRedis

#: Records memoised per worker: the current version of the active experiments plus the
#: few older ones that exposures name. A 1,000-arm record is ~30 KB.
MAX_MEMO: Final = 1024


@dataclass(frozen=True, slots=True)
class CurrentAllocation:
    """The stored current allocation of an experiment, with the config it serves."""

    config: ExperimentConfig
    record: AllocationRecord

    @property
    def valid_until(self) -> int:
        """Unix seconds when this version stops being current."""
        return valid_until(self.record.version, self.config.allocation_interval_s)


def weights_of(entry: CachedExperiment) -> list[float]:
    """The allocation a worker proposes from its cached entry: the propensities as
    probabilities, after the experiment's floor and with its holdout (the weights a unit
    is served with: a unit outside the holdout is drawn from them without it,
    :func:`~bandit_core.holdout.without_holdout`)."""
    config = entry.config
    floored = apply_floor(normalized(entry.propensities), config.min_arm_share)
    return with_holdout(floored, config.holdout_share, config.control_index)


class AllocationStore:
    """Stored allocation versions (Redis, first writer wins) with a per-worker memo."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: RedisKeys,
        cache: DecisionCache,
        retention_s: int,
        *,
        clock: Callable[[], float] = time.time,
        max_memo: int = MAX_MEMO,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cache = cache
        self.retention_s = retention_s
        #: Unix time source (the epoch of a request); tests move it across epochs.
        self.clock = clock
        self.max_memo = max_memo
        self._memo: OrderedDict[tuple[str, int], AllocationRecord] = OrderedDict()

    def memoized(
        self, experiment_id: str, version: int, now: float | None = None
    ) -> AllocationRecord | None:
        """The record of ``version`` if this worker has it and it has not expired at
        ``now`` (default: the clock's now). No I/O, no coroutine: for the hot paths."""
        key = (experiment_id, version)
        record = self._memo.get(key)
        if record is None:
            return None
        if (self.clock() if now is None else now) >= record.computed_at + self.retention_s:
            del self._memo[key]
            return None
        return record

    def _remember(self, experiment_id: str, record: AllocationRecord) -> AllocationRecord:
        key = (experiment_id, record.version)
        self._memo[key] = record
        self._memo.move_to_end(key)
        while len(self._memo) > self.max_memo:
            self._memo.popitem(last=False)
        return record

    async def current(self, experiment_id: str) -> CurrentAllocation | None:
        """The stored allocation of the epoch current now; ``None``: no such experiment.

        Stores this worker's proposal when no worker has stored the epoch yet. Raises
        :class:`redis.exceptions.RedisError` when Redis cannot be reached (no version is
        ever served that is not stored: another worker could store a different one).
        """
        entry = self.cache.fresh(experiment_id)
        if entry is None:
            entry, _degraded = await self.cache.get(experiment_id)
            if entry is None:
                return None
        return CurrentAllocation(entry.config, await self.for_entry(entry, self.clock()))

    async def for_entry(self, entry: CachedExperiment, now: float) -> AllocationRecord:
        """The stored allocation of ``entry``'s experiment at ``now`` (see :meth:`current`)."""
        config = entry.config
        experiment_id = config.experiment_id
        version = version_at(now, config.allocation_interval_s)
        known = self.memoized(experiment_id, version)
        if known is not None:
            return known
        proposal = AllocationRecord(
            version=version,
            arm_ids=tuple(entry.arm_list),
            weights=tuple(weights_of(entry)),
            min_arm_share=config.min_arm_share,
            computed_at=now,
        )
        stored = await self.redis.set(
            self.keys.allocation(experiment_id, version),
            proposal.encode(),
            nx=True,
            get=True,
            ex=self.retention_s,
        )
        # NX GET: nothing when this write won, else the winner's record (kept as is).
        record = AllocationRecord.decode(stored) if isinstance(stored, bytes | str) else proposal
        return self._remember(experiment_id, record)

    async def get_many(
        self, experiment_id: str, versions: list[int]
    ) -> dict[int, AllocationRecord]:
        """The stored records of ``versions`` (the SRM check reads every version it has
        counts for): memoised ones without I/O, the rest in one ``MGET`` (one hash tag,
        one slot). Versions never stored or expired are absent from the result. What is
        read here is not memoised: a day of old versions would evict the current ones
        the hot paths need, for a check that runs about once a minute."""
        found: dict[int, AllocationRecord] = {}
        wanted: list[int] = []
        for version in versions:
            known = self.memoized(experiment_id, version)
            if known is None:
                wanted.append(version)
            else:
                found[version] = known
        if wanted:
            raws = await self.redis.mget([self.keys.allocation(experiment_id, v) for v in wanted])
            for version, raw in zip(wanted, raws, strict=True):
                if raw is not None:
                    found[version] = AllocationRecord.decode(raw)
        return found

    async def get(self, experiment_id: str, version: int) -> AllocationRecord | None:
        """A stored version (exposures name theirs); ``None``: never stored, or expired."""
        known = self.memoized(experiment_id, version)
        if known is not None:
            return known
        raw = await self.redis.get(self.keys.allocation(experiment_id, version))
        if raw is None:
            return None
        return self._remember(experiment_id, AllocationRecord.decode(raw))

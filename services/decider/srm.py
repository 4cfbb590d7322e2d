"""The SRM check of one experiment, from its folded counts and its stored allocations.

The fold counts new unit decisions per (allocation version, arm)
(:attr:`bandit_core.state.ExperimentState.srm`); the weights each version promised are
the allocation store's records. Both are read here and handed to the pure test
(:func:`bandit_core.srm.srm_test`). A version whose record has expired (retention) is
left out, and how many versions and units that is, is reported: a test silently
covering less than it seems would be worse than none.

Two callers: ``GET /experiments/{id}/stats`` (which also shows the result), and a
low-rate background refresh (:func:`refresh_srm_gauges`) that keeps the Prometheus gauge
``mab_srm_p_value{experiment_id}`` current for experiments nobody looks at. The gauge's
label set is bounded by the experiments that exist and have unit counts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Final

from redis.exceptions import RedisError

from bandit_core.srm import VersionCounts, srm_test
from bandit_core.state import ExperimentState
from mab_client.models import SrmPublic
from schemas.events import ExperimentConfig
from services.decider.allocations import AllocationStore
from services.decider.metrics import DeciderMetrics
from services.decider.store import ConfigStore

log = logging.getLogger(__name__)

#: Seconds between background refreshes of the SRM gauges: counts move slowly against
#: a 0.001 threshold, and a refresh reads every experiment's snapshot.
SRM_REFRESH_S: Final = 60.0
#: Experiments read per page of the index during a refresh.
_PAGE: Final = 200


def has_units(state: ExperimentState) -> bool:
    """Whether the experiment has counted any unit decision (else there is no check)."""
    return bool(state.srm) or state.srm_dropped > 0


async def srm_of(
    allocations: AllocationStore, config: ExperimentConfig, state: ExperimentState
) -> SrmPublic:
    """The SRM check over the versions whose allocation is still stored (each unit
    counted once, under the version of its first decision; see :mod:`bandit_core.srm`)."""
    experiment_id = config.experiment_id
    counts = {v: dict(arms) for v, arms in state.srm.items()}
    records = await allocations.get_many(experiment_id, sorted(counts))
    covered = [
        VersionCounts(record.arm_ids, record.weights, counts[v]) for v, record in records.items()
    ]
    skipped = [v for v in counts if v not in records]
    result = await asyncio.to_thread(srm_test, covered)
    return SrmPublic(
        **asdict(result),
        alarm=result.alarm,
        skipped_versions=len(skipped),
        skipped_units=state.srm_dropped + sum(sum(counts[v].values()) for v in skipped),
    )


async def refresh_srm_gauges(
    store: ConfigStore, allocations: AllocationStore, metrics: DeciderMetrics
) -> int:
    """Recompute the gauge of every existing experiment with unit counts; drop the
    gauges of experiments that no longer exist or have none. Returns how many it set."""
    live: dict[str, float | None] = {}
    offset = 0
    while True:
        configs = await store.list_configs(offset, _PAGE)
        for config in configs:
            exp = config.experiment_id
            _config_raw, snap_raw = await store.get_config_and_snapshot(exp)
            state = await asyncio.to_thread(ExperimentState.from_snapshot, snap_raw, exp)
            if has_units(state):
                live[exp] = (await srm_of(allocations, config, state)).p_value
        if len(configs) < _PAGE:
            break
        offset += _PAGE
    metrics.replace_srm(live)
    return len(live)


async def srm_gauge_loop(
    store: ConfigStore,
    allocations: AllocationStore,
    metrics: DeciderMetrics,
    every_s: float = SRM_REFRESH_S,
) -> None:
    """:func:`refresh_srm_gauges` every ``every_s`` seconds until cancelled; a failed
    round is logged and the gauges keep their last values."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await refresh_srm_gauges(store, allocations, metrics)
        except (RedisError, OSError, ValueError) as exc:
            log.warning("SRM gauge refresh failed: %r", exc)

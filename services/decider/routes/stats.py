"""``/experiments/{id}/stats`` and ``/experiments/{id}/timeseries``: the read models.

Both are read fresh from Redis (no cache): the folded snapshot, and the projector's
buckets. Parsing and encoding are O(arms) (times buckets), tens of milliseconds for a
catalogue-sized experiment, so they run in a worker thread: the event loop keeps
serving decisions meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response

from bandit_core.state import ArmStats, ExperimentState
from bandit_core.uplift import UPLIFT_ALPHA, Uplift
from bandit_core.verdict import verdict
from mab_client.models import (
    ArmStatsPublic,
    ArmVerdictPublic,
    AttributionPublic,
    GuardrailStatusPublic,
    MetricIntervalPublic,
    StatsPublic,
    StoppingPublic,
    TimeseriesPublic,
    UpliftPublic,
)
from schemas.events import ExperimentConfig
from schemas.redis_keys import BucketKind
from services.decider.auth import READ_RESPONSES
from services.decider.errors import E404, E422, E503, not_found
from services.decider.paths import EXPERIMENT, ExperimentIdPath
from services.decider.runtime import READ, RuntimeDep
from services.decider.srm import has_units, srm_of
from services.decider.timeseries import (
    TimeRangeError,
    build_points,
    parse_change_points,
    parse_time,
    resolve_range,
    winner_changes,
)

router = APIRouter(tags=["experiments"], dependencies=[READ])


@router.get(
    f"{EXPERIMENT}/stats",
    response_model=StatsPublic,
    summary="Arm statistics",
    description="Per arm in config order: rewards observed (pulls), reward sum, mean, "
    "decisions served, unique units and the current propensity; read fresh from Redis "
    "(no cache). Once units are counted, `srm`: the sample-ratio-mismatch check of "
    "their arms against the allocation versions they were assigned under. Once rewards "
    "are folded, `stopping`: P(best) and expected loss per arm and the declared winner; "
    "with a holdout, `uplift`: the bandit's uplift over it per visitor with an "
    "anytime-valid interval (docs/stopping.md).",
    responses={404: E404, **READ_RESPONSES},
)
async def stats(experiment_id: ExperimentIdPath, rt: RuntimeDep) -> StatsPublic:
    config_raw, snap_raw = await rt.store.get_config_and_snapshot(experiment_id)
    if config_raw is None:
        raise not_found(experiment_id)

    def parse() -> tuple[
        ExperimentConfig, ExperimentState, list[ArmStats], list[float], StoppingPublic | None
    ]:
        config = ExperimentConfig.model_validate_json(config_raw)
        state = ExperimentState.from_snapshot(snap_raw, experiment_id)
        arm_stats = state.stats_for(config.arm_ids)
        now = time.time()
        props = rt.cache.routed_propensities(config, state) or rt.cache.propensities(
            config, arm_stats, now, state.guard.paused
        )
        state.config = config
        return config, state, arm_stats, props, stopping_public(state, now)

    config, state, arm_stats, props, stopping = await asyncio.to_thread(parse)
    srm = await srm_of(rt.allocations, config, state) if has_units(state) else None
    if srm is not None:
        rt.metrics.srm(experiment_id, srm.p_value)
    return StatsPublic(
        experiment_id=experiment_id,
        strategy=config.strategy,
        strategy_params=dict(config.strategy_params),
        config_version=config.version,
        snapshot_version=state.version,
        arms=[
            ArmStatsPublic(
                arm_id=a,
                pulls=s.pulls,
                reward_sum=s.reward_sum,
                mean=s.mean,
                decisions=s.decisions,
                propensity=p,
                units=s.units,
                **_guardrail_fields(config, state, a),
            )
            for a, s, p in zip(config.arm_ids, arm_stats, props, strict=True)
        ],
        propensities=dict(zip(config.arm_ids, props, strict=True)),
        attribution=None
        if config.attribution_window_s is None
        and not (state.pending_count or state.defaulted or state.late or state.untracked)
        else AttributionPublic(
            window_s=config.attribution_window_s,
            pending=state.pending_count,
            defaulted=state.defaulted,
            late=state.late,
            untracked=state.untracked,
        ),
        assignment=config.assignment,
        srm=srm,
        stopping=stopping,
        uplift=uplift_public(config, state.uplift),
    )


def stopping_public(state: ExperimentState, now: float) -> StoppingPublic | None:
    """The posterior's verdict now (draws seeded by the snapshot's version, so one
    snapshot reads the same), with the winner the fold declared; ``None`` before any
    reward."""
    if state.rewards == 0:
        return None
    found = verdict(state, now, f"stats\0{state.experiment_id}\0{state.version}")
    if found is None:  # pragma: no cover - a state with rewards has a config with arms
        return None
    config = state.config
    assert config is not None
    summary = found.summary
    return StoppingPublic(
        posterior=found.strategy,
        arms=[
            ArmVerdictPublic(arm_id=a, p_best=p, expected_loss=loss)
            for a, p, loss in zip(found.arm_ids, summary.p_best, summary.expected_loss, strict=True)
        ],
        leader=found.arm_ids[summary.leader],
        stop_probability=config.stop_probability,
        stop_expected_loss=found.threshold,
        winner=state.winner,
    )


def uplift_public(config: ExperimentConfig, uplift: Uplift | None) -> UpliftPublic | None:
    """The uplift over the holdout (``None`` without a holdout)."""
    if config.holdout_share <= 0.0 or config.control_arm_id is None:
        return None
    if uplift is None:
        uplift = Uplift.for_config(config)
    low, high = uplift.interval()
    return UpliftPublic(
        control_arm_id=config.control_arm_id,
        holdout_share=config.holdout_share,
        holdout_visitors=uplift.holdout.n,
        bandit_visitors=uplift.bandit.n,
        holdout_mean=uplift.holdout_mean,
        bandit_mean=uplift.bandit_mean,
        uplift=uplift.estimate,
        low=low,
        high=high,
        confidence=1.0 - UPLIFT_ALPHA,
    )


def _guardrail_fields(
    config: ExperimentConfig, state: ExperimentState, arm_id: str
) -> dict[str, Any]:
    """An arm's metric intervals, guardrail statuses and pause (docs/guardrails.md); none
    of them for an experiment without metrics, which keeps the original answer's shape."""
    if not config.metrics:
        return {}
    guard = state.guard
    intervals: dict[str, MetricIntervalPublic] = {}
    for spec in config.metrics:
        found = guard.interval(arm_id, spec.name)
        if found is not None:
            (low, high), n = found
            intervals[spec.name] = MetricIntervalPublic(samples=n, low=low, high=high)
    fields: dict[str, Any] = {"metrics": intervals}
    if config.guardrails:
        fields["guardrails"] = [
            GuardrailStatusPublic(
                guardrail=i,
                metric=g.metric,
                action=g.action,
                status=guard.status(config, i, arm_id),
            )
            for i, g in enumerate(config.guardrails)
        ]
    if arm_id in guard.paused:
        fields["paused"] = True
    return fields


@router.get(
    f"{EXPERIMENT}/timeseries",
    response_model=TimeseriesPublic,
    response_model_by_alias=True,
    summary="Per-hour (or per-minute) performance per arm",
    description="Served from the projector's buckets (bucketed by each event's own "
    "time, UTC): per bucket and arm the decisions, applied rewards, reward sum, "
    "conversion rate and traffic share, plus detected change points and the buckets "
    "where the winning arm changed (highest conversion rate among arms with at least "
    "20 rewards). `from`/`to`: unix seconds or ISO 8601, default the last 48 hours "
    "(hour) or 60 minutes (minute); at most 31 days (hour) or 24 hours (minute) "
    "apart. Contract: docs/timeseries-api.md.",
    responses={404: E404, 422: E422, 503: E503, **READ_RESPONSES},
)
async def timeseries(
    experiment_id: ExperimentIdPath,
    rt: RuntimeDep,
    bucket: Annotated[BucketKind, Query(description="Bucket width: `hour` or `minute`.")] = "hour",
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=64,
            description="Start: unix seconds or ISO 8601 (naive = UTC).",
            examples=["2026-11-27T09:00:00Z"],
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(max_length=64, description="End (exclusive): unix seconds or ISO 8601."),
    ] = None,
) -> Response:
    try:
        lo, hi = resolve_range(bucket, parse_time(from_, "from"), parse_time(to, "to"), time.time())
    except TimeRangeError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    read = await rt.store.read_timeseries(experiment_id, bucket, lo, hi)
    config_raw = read.config_raw
    if config_raw is None:
        raise not_found(experiment_id)

    def render() -> bytes:
        config = ExperimentConfig.model_validate_json(config_raw)
        points = build_points(config.arm_ids, read.buckets)
        public = TimeseriesPublic(
            experiment_id=experiment_id,
            bucket=bucket,
            from_=lo,
            to=hi,
            arm_ids=list(config.arm_ids),
            points=points,
            change_points=parse_change_points(read.change_points),
            winner_changes=winner_changes(points),
        )
        return orjson.dumps(public.model_dump(mode="json", by_alias=True))

    return Response(await asyncio.to_thread(render), media_type="application/json")

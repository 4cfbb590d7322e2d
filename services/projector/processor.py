"""The bucket projection as a processor: decisions + rewards + change points -> buckets.

Pure (see :class:`stream_runtime.processor.Processor`): a batch of one experiment's
events reads the experiment's config (for ``reward_rejection``) and looks its rewards'
dedupe keys up in the projector's own dedupe set; :func:`~services.projector.
projection.project` turns the events into per-hour and per-minute increments, which
become ``HINCRBY`` + ``EXPIREAT`` per bucket, and change points, which join a sorted set
kept for the hour buckets' retention. The engine writes them in one compare-and-set
with the projector's offsets and dedupe keys, so Redis holds either the buckets before a
batch with the old offsets or after it with the new ones.

The projector reads the same rewards and decisions as the reward consumer with the same
rules, and only counts what it skips: the reward consumer owns the dead letters, so a
bad record is parked once, not once per processor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bandit_core.fold import dedupe_keys
from schemas.codec import DecodeError, decode
from schemas.events import AnyEvent, ChangePointDetected, DecisionMade, RewardObserved
from schemas.rejections import Rejection
from services.projector.projection import Retention, project
from stream_runtime.batch import (
    BatchReport,
    Decoder,
    RecordLike,
    decode_decision_record,
    decode_reward_record,
)
from stream_runtime.processor import (
    Applied,
    Changes,
    ExperimentProcessor,
    Guard,
    Loaded,
    Reads,
    ZAdd,
    unknown_experiment,
)

log = logging.getLogger("services.projector")


@dataclass(slots=True)
class ProjectionReport(BatchReport):
    """What one batch did; the projector sums these into its running stats."""

    applied: int = 0
    duplicates: int = 0
    expired: int = 0  # older than every bucket's retention: nothing to store


def decode_change_point_record(record: RecordLike) -> ChangePointDetected | None:
    """A record of the experiments topic: its change point, ``None`` for the config
    events (not projected), a reject for what does not belong there."""
    raw = record.value
    if raw is None:
        raise DecodeError(Rejection.EMPTY, "record without a value (tombstone)")
    event = decode(raw)
    if isinstance(event, DecisionMade | RewardObserved):
        raise DecodeError(
            Rejection.WRONG_EVENT_TYPE, f"type {event.type!r} on the experiments topic"
        )
    return event if isinstance(event, ChangePointDetected) else None


def batch_dedupe_keys(events: Sequence[AnyEvent]) -> list[str]:
    """Dedupe keys (``d:``/``e:``) of the rewards among ``events``, without repeats."""
    keys: dict[str, None] = {}
    for event in events:
        if isinstance(event, RewardObserved):
            for k in dedupe_keys(event):
                keys[k] = None
    return list(keys)


@dataclass
class BucketProjection(ExperimentProcessor):
    """The projector's processor (see the module docstring)."""

    retention: Retention
    name: str = "projector"
    config_log = log

    @property
    def decoders(self) -> Mapping[str, Decoder]:
        return {
            self.topics.rewards: decode_reward_record,
            self.topics.decisions: decode_decision_record,
            self.topics.experiments: decode_change_point_record,
        }

    def guard(self, experiment_id: str) -> Guard:
        k = self.keys.experiment(experiment_id)
        return Guard(k.projector_offsets, k.projector_seen)

    def new_report(self) -> ProjectionReport:
        return ProjectionReport()

    def plan(self, experiment_id: str, events: Sequence[AnyEvent]) -> Reads:
        config = self.keys.experiment(experiment_id).config
        return Reads(get=(config,), seen=batch_dedupe_keys(events))

    def apply(
        self, experiment_id: str, events: Sequence[AnyEvent], loaded: Loaded, now: float
    ) -> Applied[ProjectionReport]:
        k = self.keys.experiment(experiment_id)
        report = ProjectionReport()
        config = self.config(experiment_id, loaded)
        if config is None:
            return unknown_experiment(report, len(events))
        p = project(events, config, loaded.seen.keys(), self.retention, now)
        report.applied, report.duplicates, report.expired = p.applied, p.duplicates, p.expired
        changes = Changes()
        for (kind, start), increments in p.buckets.items():
            key = k.bucket(kind, start)
            changes.hincr[key] = increments
            changes.expireat[key] = self.retention.expires_at(kind, start)
        if p.change_points:
            members = {member.decode(): ts for member, ts in p.change_points.items()}
            changes.zadd[k.change_points] = ZAdd(members, self.retention.hour_s)
        return Applied(report, changes, p.new_seen, p.rejects)

"""The exposure judge: records of the exposures topic -> ``DecisionMade`` on the decisions topic.

An SDK or an edge worker deciding locally may report what it showed straight to Kafka
instead of ``POST /exposures``: one record per exposure, the JSON of one ``POST
/exposures`` item (:class:`mab_client.models.ExposureCreate`), keyed by experiment id.
This processor holds such a record to the route's rules, in the same order:

1. **decode** with the codec (:func:`schemas.codec.decode_exposure`): bad JSON, a
   wrong shape or an invalid id is dead-lettered with the codec's reason;
2. **plan/load**: the experiment's config, the stored allocation record of every
   version the batch names, and the exposure marks of its exposure ids, in the engine's
   one read per experiment;
3. **apply**: :func:`bandit_core.exposures.judge_exposure`, the route's rule; a refusal
   is dead-lettered with its :class:`~schemas.rejections.Rejection`
   (``unknown_experiment``, ``unknown_arm``, ``unknown_allocation``,
   ``arm_not_assigned``); an accepted exposure whose mark exists (reported before, over
   REST or Kafka) or that repeats within the batch is a duplicate and dropped;
4. the new exposures' ``DecisionMade`` events are the processor's outputs, which the
   engine (``outputs_first``) hands to the reward consumer's producer, acknowledged,
   *before* the write that sets their marks (``SET`` with the REST path's TTL, the
   allocation retention) and moves this processor's offsets past them.

**Guarantees.** Into the topic: at least once. A crash (or a refused write) between the
acknowledged produce and the write leaves the marks unset and the offsets where they
were, so the records are judged again and the same events produced again, identical:
the event id is derived from the exposure id and the decision id from (unit, version).
A REST request racing a record of the same exposure id may produce it too, identical.
Into the statistics: exactly once, because the fold counts a unit decision id once
(``u:<decision id>`` in its dedupe set). The projector's time buckets count decision
records, so such a duplicate shows there as one more decision in its bucket.
Refusals are decided once per record: the offsets stored with the marks keep a
redelivered record from being judged again against a newer config (an arm added
since would otherwise flip a dead-lettered record into a decision).

Pure, like every processor: no store, no Kafka, no clock but the ``now`` it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from bandit_core.allocation import AllocationError, AllocationRecord
from bandit_core.exposures import ExposureRejected, judge_exposure
from mab_client.models import ExposureCreate
from schemas.codec import DecodeError, decode_exposure
from schemas.events import AnyEvent
from schemas.redis_keys import RedisKeys
from schemas.rejections import Rejection
from schemas.topics import TopicNames
from stream_runtime.batch import BatchReport, Decoder, RecordLike
from stream_runtime.processor import Applied, Changes, ConfigMemo, Guard, Loaded, Reads, Skip

log = logging.getLogger("services.reward_consumer")


@dataclass(slots=True)
class ExposureReport(BatchReport):
    """What one batch of exposures did (field names: ``mab_stream_records`` outcomes)."""

    exposures_accepted: int = 0  # became a DecisionMade
    exposures_duplicate: int = 0  # marked already, or repeated within the batch


def decode_exposure_record(record: RecordLike) -> AnyEvent:
    """Decode a record of the exposures topic (see :func:`schemas.codec.decode_exposure`).

    The engine groups decoded records by ``experiment_id`` and tracks ``ts``, the only
    attributes it reads of what a decoder returns; an exposure has both, but it is not
    an event (it becomes one once judged), hence the cast, undone in
    :meth:`ExposureJudge._exposures`.
    """
    raw = record.value
    if raw is None:
        raise DecodeError(Rejection.EMPTY, "record without a value (tombstone)")
    return cast("AnyEvent", decode_exposure(raw))


class ExposureJudge:
    """The exposures topic's processor (see the module docstring)."""

    name = "exposure judge"

    def __init__(self, topics: TopicNames, keys: RedisKeys, mark_ttl_s: int) -> None:
        """``mark_ttl_s``: how long an exposure id stays marked (the REST path's TTL, the
        allocation retention: past it, an exposure's version is refused anyway)."""
        self.keys = keys
        self.mark_ttl_s = mark_ttl_s
        self._decoders: dict[str, Decoder] = {topics.exposures: decode_exposure_record}
        self._configs = ConfigMemo(log)

    @property
    def decoders(self) -> Mapping[str, Decoder]:
        return self._decoders

    def guard(self, experiment_id: str) -> Guard:
        return Guard(
            self.keys.exposure_offsets(experiment_id), self.keys.exposure_seen(experiment_id)
        )

    def new_report(self) -> ExposureReport:
        return ExposureReport()

    @staticmethod
    def _exposures(events: Sequence[AnyEvent]) -> Sequence[ExposureCreate]:
        """The decoded records as what :func:`decode_exposure_record` made of them."""
        return cast("Sequence[ExposureCreate]", events)

    def plan(self, experiment_id: str, events: Sequence[AnyEvent]) -> Reads:
        """The config, each named allocation version and each exposure id's mark."""
        exposures = self._exposures(events)
        keys = self.keys
        versions = dict.fromkeys(x.allocation_version for x in exposures)
        marks = dict.fromkeys(keys.exposure(experiment_id, x.exposure_id) for x in exposures)
        return Reads(
            get=(
                keys.experiment(experiment_id).config,
                *(keys.allocation(experiment_id, v) for v in versions),
                *marks,
            )
        )

    def _record(self, raw: bytes | None) -> AllocationRecord | None:
        """A stored allocation version, ``None`` if absent or unreadable (logged: then
        every exposure naming it is refused as ``unknown_allocation``, as by the route)."""
        if raw is None:
            return None
        try:
            return AllocationRecord.decode(raw)
        except AllocationError:
            log.exception("unreadable allocation record; refusing its exposures")
            return None

    def apply(
        self, experiment_id: str, events: Sequence[AnyEvent], loaded: Loaded, now: float
    ) -> Applied[ExposureReport]:
        """Judge each exposure, drop duplicates, and name the new ones' events and marks.

        Judged before the duplicate check, as by the route: a repeated exposure that is
        refused now (its version expired, say) is dead-lettered, not counted a duplicate.
        """
        keys = self.keys
        values = loaded.values
        config = self._configs(values[keys.experiment(experiment_id).config])
        records: dict[int, AllocationRecord | None] = {}
        report = ExposureReport()
        changes = Changes()
        skipped: list[Skip] = []
        decisions: list[AnyEvent] = []
        expire_at = int(now) + self.mark_ttl_s
        for at, exposure in enumerate(self._exposures(events)):
            version = exposure.allocation_version
            if version not in records:
                records[version] = self._record(values[keys.allocation(experiment_id, version)])
            verdict = judge_exposure(config, records[version], exposure)
            if isinstance(verdict, ExposureRejected):
                skipped.append(Skip(at, verdict.reason, verdict.detail))
                continue
            mark = keys.exposure(experiment_id, exposure.exposure_id)
            if values[mark] is not None or mark in changes.set:
                report.exposures_duplicate += 1
                continue
            decisions.append(verdict)
            changes.set[mark] = b"1"
            changes.expireat[mark] = expire_at
            report.exposures_accepted += 1
        if config is None:
            # Nothing to write, not even the offsets: a redelivery is refused again.
            return Applied(report, None, skipped=skipped)
        return Applied(report, changes, skipped=skipped, outputs=decisions)

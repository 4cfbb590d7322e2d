"""Settings of the projector: one frozen class, validated once at start-up.

A bad value (``MAB_PROJECTOR_RETENTION_DAYS=0``) fails the process before it joins its
consumer group instead of inside the poll loop. The shared fields
(``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, prefixes, ``LOG_LEVEL``) come from
:class:`stream_runtime.settings.StreamSettings`.
"""

from __future__ import annotations

from pydantic import Field

from services.projector.projection import Retention
from stream_runtime.settings import (
    GroupId,
    LoopFields,
    MaxBatchRecords,
    PollTimeoutMs,
    RetryBackoffS,
    SessionTimeoutMs,
    StreamSettings,
)

_DAY = 86_400


class ProjectorSettings(StreamSettings):
    """Environment of ``python -m services.projector`` (field names are the env vars)."""

    loop_fields = LoopFields.with_prefix("mab_projector_")

    #: Its own group: the projector's progress is independent of the reward consumer's.
    mab_projector_group_id: GroupId = "mab-projector"
    mab_projector_max_batch_records: MaxBatchRecords = 5000
    mab_projector_poll_timeout_ms: PollTimeoutMs = 500
    mab_projector_session_timeout_ms: SessionTimeoutMs = 10_000
    mab_projector_retry_backoff_s: RetryBackoffS = 1.0
    #: Hour buckets expire this long after their hour starts (EXPIREAT).
    mab_projector_retention_days: float = Field(default=90, gt=0, le=3650)
    #: Minute buckets (the demo's fast view) are kept only briefly.
    mab_projector_minute_retention_days: float = Field(default=2, gt=0, le=90)

    @property
    def retention(self) -> Retention:
        return Retention(
            hour_s=int(self.mab_projector_retention_days * _DAY),
            minute_s=int(self.mab_projector_minute_retention_days * _DAY),
        )

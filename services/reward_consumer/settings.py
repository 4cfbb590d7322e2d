"""Settings of the reward consumer: one frozen class, validated once at start-up.

A bad value (e.g. ``MAB_MAX_BATCH_RECORDS=0``) fails the process before it joins the
consumer group, instead of failing later inside the poll loop. The shared fields
(``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, prefixes, ``LOG_LEVEL``) come from
:class:`stream_runtime.settings.StreamSettings`.
"""

from __future__ import annotations

from pydantic import Field

from bandit_core.allocation import DEFAULT_RETENTION_S, MAX_RETENTION_S, MIN_RETENTION_S
from stream_runtime.settings import (
    GroupId,
    LoopFields,
    MaxBatchRecords,
    PollTimeoutMs,
    RetryBackoffS,
    SessionTimeoutMs,
    StreamSettings,
)


class ConsumerSettings(StreamSettings):
    """Environment of ``python -m services.reward_consumer``.

    Field names *are* the (case-insensitive) env var names, so there is no alias table
    to keep in sync with the docs.
    """

    loop_fields = LoopFields.with_prefix("mab_", group_id="mab_consumer_group_id")

    mab_consumer_group_id: GroupId = "mab-reward-consumer"
    #: Bigger batches fold faster but redeliver more on a crash.
    mab_max_batch_records: MaxBatchRecords = 2000
    mab_poll_timeout_ms: PollTimeoutMs = 500
    mab_session_timeout_ms: SessionTimeoutMs = 10_000
    mab_retry_backoff_s: RetryBackoffS = 1.0
    #: How often expired attribution windows are looked for (services/reward_consumer/
    #: attribution.py); a window closes at most this much after the watermark passes it.
    mab_attribution_sweep_s: float = Field(default=1.0, gt=0, le=3600)
    #: With no traffic at all event time stands still: windows then close by the wall
    #: clock minus this grace (which leaves in-flight rewards time to arrive).
    mab_attribution_idle_grace_s: float = Field(default=300.0, ge=0, le=7 * 86400)
    #: The decider's variable: how long a stored allocation version is kept, and so how
    #: long the exposure judge keeps an exposure id marked (the route's TTL). Set it to
    #: the decider's value; a shorter one only lets a late repeat of an exposure produce
    #: its (identical) decision again, which the fold counts once.
    mab_allocation_retention_s: int = Field(
        default=DEFAULT_RETENTION_S, ge=MIN_RETENTION_S, le=MAX_RETENTION_S
    )

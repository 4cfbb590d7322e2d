"""Settings of the projector: one frozen class, validated once at start-up.

A bad value (``MAB_PROJECTOR_RETENTION_DAYS=0``) fails the process before it joins its
consumer group instead of inside the poll loop.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.projector.projection import Retention

_DAY = 86_400


class ProjectorSettings(BaseSettings):
    """Environment of ``python -m services.projector`` (field names are the env vars)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    mab_topic_prefix: str = ""
    mab_redis_prefix: str = ""
    log_level: str = "INFO"
    #: Its own group: the projector's progress is independent of the reward consumer's.
    mab_projector_group_id: str = Field(default="mab-projector", min_length=1)
    #: One Redis read and one write round trip are amortised over a batch.
    mab_projector_max_batch_records: int = Field(default=5000, ge=1, le=100_000)
    mab_projector_poll_timeout_ms: int = Field(default=500, ge=1, le=60_000)
    mab_projector_session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    mab_projector_retry_backoff_s: float = Field(default=1.0, gt=0, le=60)
    #: Hour buckets expire this long after their hour starts (EXPIREAT).
    mab_projector_retention_days: float = Field(default=90, gt=0, le=3650)
    #: Minute buckets (the demo's fast view) are kept only briefly.
    mab_projector_minute_retention_days: float = Field(default=2, gt=0, le=90)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {v!r}")
        return level

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.mab_topic_prefix)

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.mab_redis_prefix)

    @property
    def retention(self) -> Retention:
        return Retention(
            hour_s=int(self.mab_projector_retention_days * _DAY),
            minute_s=int(self.mab_projector_minute_retention_days * _DAY),
        )

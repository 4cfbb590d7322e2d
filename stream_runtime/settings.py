"""The settings fields every stream processor shares (same env var names everywhere).

Each service subclasses :class:`StreamSettings` with its own prefixed fields (group id,
batch size, timeouts) and exposes them under the names :class:`~stream_runtime.kafka_loop.
LoopSettings` reads. Field names *are* the (case-insensitive) env var names, so there is
no alias table to keep in sync with the docs.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from stream_runtime.redis_client import AnyRedis, redis_from_url

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


class StreamSettings(BaseSettings):
    """Connection, naming and logging settings of a stream processor; frozen, validated
    once at start-up so a bad value fails before the process joins its consumer group."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Bound on every Redis reply and connect (the decider reads the same name for its
    #: reply timeout). A batch whose call times out is rewound and retried (the stored
    #: offsets make a write whose reply was lost a no-op), so a short bound costs only
    #: a retried batch; without one a frozen Redis held a batch, and SIGTERM, forever.
    #: Far above a batch's Lua script (milliseconds).
    redis_socket_timeout_s: float = Field(default=5.0, gt=0, le=300)
    redis_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    mab_topic_prefix: str = ""
    mab_redis_prefix: str = ""
    log_level: str = "INFO"
    #: Prometheus exporter (``/metrics``); unset: none. ``mab up`` picks a free port.
    mab_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    mab_metrics_host: str = "127.0.0.1"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {v!r}")
        return level

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.mab_topic_prefix)

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.mab_redis_prefix)

    def redis_client(self) -> AnyRedis:
        """The processor's Redis client (no I/O until the first command).

        Every call fails after the socket timeouts instead of waiting on a hung Redis:
        the batch loop then rewinds the batch and looks at its stop event, so SIGTERM
        is honoured while Redis is frozen (tests/faults/test_redis_outage.py). Set here,
        not left to redis-py: its default is 5 s in 8.x and none at all in 5.x, which
        pyproject allows.
        """
        return redis_from_url(
            self.redis_url,
            decode_responses=False,
            socket_timeout=self.redis_socket_timeout_s,
            socket_connect_timeout=self.redis_connect_timeout_s,
        )

"""The settings fields every stream processor shares (same env var names everywhere).

Each service subclasses :class:`StreamSettings` with its own prefixed fields (group id,
batch size, timeouts) and exposes them under the names :class:`~stream_runtime.kafka_loop.
LoopSettings` reads. Field names *are* the (case-insensitive) env var names, so there is
no alias table to keep in sync with the docs. The Kafka connection fields (servers,
TLS, SASL) come from :class:`~stream_runtime.kafka_connection.KafkaConnection`, shared
with the decider and the CLI.
"""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from stream_runtime.kafka_connection import KafkaConnection

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


class StreamSettings(KafkaConnection):
    """Connection, naming and logging settings of a stream processor; frozen, validated
    once at start-up so a bad value fails before the process joins its consumer group."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    redis_url: str = "redis://127.0.0.1:6379/0"
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


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per invalid setting, starting with the variable's name (``KAFKA_SASL_
    PASSWORD: ...``) instead of pydantic's multi-line report with its type codes."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]).upper()
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return lines


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """``cls()`` from the environment, or exit 2 with one line per invalid variable on
    stderr: a process started with a bad setting stops before it connects anywhere."""
    try:
        return cls()
    except ValidationError as exc:
        for line in settings_errors(exc):
            print(f"invalid setting: {line}", file=sys.stderr)
        raise SystemExit(2) from None

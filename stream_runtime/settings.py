"""The settings every process shares, declared once (same env var names everywhere).

:class:`ProcessSettings` is the base of every process's settings (frozen, validated
once at start-up, ``LOG_LEVEL``); :class:`ServiceSettings` adds what every service
that touches the log and the state shares: the Kafka connection (servers, TLS, SASL,
from :class:`~stream_runtime.kafka_connection.KafkaConnection`), ``REDIS_URL`` and its
timeouts, and the topic and key prefixes. The decider and the CLI extend it;
:class:`StreamSettings` adds the stream processors' metrics exporter, and each
processor subclasses it with its own prefixed fields (group id, batch size, timeouts)
under the names :class:`LoopSettings` reads; demo traffic
extends :class:`ProcessSettings`. Field names *are* the (case-insensitive) env var
names, so there is no alias table to keep in sync with the docs.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, ClassVar, Generic, NamedTuple, Protocol, Self, TypeVar, overload

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from stream_runtime.kafka_connection import KafkaConnection
from stream_runtime.redis_client import AnyRedis, redis_from_url

T = TypeVar("T")

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


class ProcessSettings(BaseSettings):
    """The base of every process's settings: frozen, and validated once at start-up so
    a bad value fails before the process connects anywhere or joins a consumer group."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, populate_by_name=True
    )

    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {v!r}")
        return level


class ServiceSettings(KafkaConnection, ProcessSettings):
    """Connection and naming settings of a process that reads or writes the log and the
    state: the decider, the stream processors and the CLI."""

    model_config = ProcessSettings.model_config

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Bound on every Redis reply and connect. A processor's batch whose call times out
    #: is rewound and retried (the stored offsets make a write whose reply was lost a
    #: no-op), so a short bound costs only a retried batch; without one a frozen Redis
    #: held a batch, and SIGTERM, forever. Far above a batch's Lua script (milliseconds).
    redis_socket_timeout_s: float = Field(default=5.0, gt=0, le=300)
    redis_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    #: Prefixes of topic names and Redis keys (tests and tenants).
    mab_topic_prefix: str = ""
    mab_redis_prefix: str = ""

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.mab_topic_prefix)

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.mab_redis_prefix)

    def redis_client(self, **options: Any) -> AnyRedis:
        """The process's Redis client (no I/O until the first command); ``options`` go
        to redis-py (the decider adds a health check).

        Every call fails after the socket timeouts instead of waiting on a hung Redis:
        the batch loop then rewinds the batch and looks at its stop event, so SIGTERM
        is honoured while Redis is frozen (tests/faults/test_runtime_redis_outage.py). Set here,
        not left to redis-py: its default is 5 s in 8.x and none at all in 5.x, which
        pyproject allows.
        """
        return redis_from_url(
            self.redis_url,
            decode_responses=False,
            socket_timeout=self.redis_socket_timeout_s,
            socket_connect_timeout=self.redis_connect_timeout_s,
            **options,
        )


#: The bounds of the loop's settings, the same for every processor (each declares its
#: own fields with them, under its own env var names and with its own defaults).
GroupId = Annotated[str, Field(min_length=1)]
#: One Redis read and one write round trip are amortised over a batch.
MaxBatchRecords = Annotated[int, Field(ge=1, le=100_000)]
PollTimeoutMs = Annotated[int, Field(ge=1, le=60_000)]
#: How long the group waits for a silent (crashed) member before giving its partitions
#: to another: the bound on how long a SIGKILLed processor stalls its partitions.
SessionTimeoutMs = Annotated[int, Field(ge=6_000, le=300_000)]
#: Pause after a failed batch (Redis down) before the same records are retried.
RetryBackoffS = Annotated[float, Field(gt=0, le=60)]


class LoopSettings(Protocol):
    """What the loop reads of a service's settings (each keeps its own env var names)."""

    def connection(self) -> KafkaConnection: ...
    @property
    def group_id(self) -> str: ...
    @property
    def max_batch_records(self) -> int: ...
    @property
    def poll_timeout_ms(self) -> int: ...
    @property
    def session_timeout_ms(self) -> int: ...
    @property
    def retry_backoff_s(self) -> float: ...


class LoopFields(NamedTuple):
    """Which of a processor's own fields hold what the batch loop reads
    (:class:`LoopSettings`): each service keeps its own env
    var names for them."""

    group_id: str
    max_batch_records: str
    poll_timeout_ms: str
    session_timeout_ms: str
    retry_backoff_s: str

    @classmethod
    def with_prefix(cls, prefix: str, **named: str) -> LoopFields:
        """``<prefix><loop name>`` for each, but for the fields ``named`` otherwise."""
        return cls(*(named.get(name, prefix + name) for name in cls._fields))


class LoopSetting(Generic[T]):
    """One of the loop's settings on a processor's settings: the value of the field that
    the class's :attr:`StreamSettings.loop_fields` names for it (a descriptor rather than
    a field, so it reads no env var of its own)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, settings: None, owner: type) -> Self: ...
    @overload
    def __get__(self, settings: StreamSettings, owner: type) -> T: ...
    def __get__(self, settings: StreamSettings | None, owner: type) -> Self | T:
        if settings is None:
            return self
        value: T = getattr(settings, getattr(settings.loop_fields, self.name))
        return value


class StreamSettings(ServiceSettings):
    """Settings of a stream processor: the shared ones plus its metrics exporter, and
    the loop's settings read from the subclass's fields that :attr:`loop_fields` names."""

    #: Prometheus exporter (``/metrics``); unset: none. ``mab up`` picks a free port.
    mab_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    mab_metrics_host: str = "127.0.0.1"

    loop_fields: ClassVar[LoopFields]
    group_id: ClassVar[LoopSetting[str]] = LoopSetting()
    max_batch_records: ClassVar[LoopSetting[int]] = LoopSetting()
    poll_timeout_ms: ClassVar[LoopSetting[int]] = LoopSetting()
    session_timeout_ms: ClassVar[LoopSetting[int]] = LoopSetting()
    retry_backoff_s: ClassVar[LoopSetting[float]] = LoopSetting()


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def env_name(cls: type[BaseSettings] | None, field: str) -> str:
    """The environment variable a person sets for ``field`` of ``cls``: the documented
    name of an aliased field (``AliasChoices(field name, ENV_NAME, ...)``, e.g. the
    decider's ``MAB_AUTH``), otherwise the field name itself, upper-cased."""
    info = None if cls is None else cls.model_fields.get(field)
    alias = None if info is None else info.validation_alias
    if isinstance(alias, AliasChoices) and len(alias.choices) > 1:
        return str(alias.choices[1])
    return field.upper()


def settings_errors(exc: ValidationError, cls: type[BaseSettings] | None = None) -> list[str]:
    """One line per invalid setting, starting with the variable's name (``KAFKA_SASL_
    PASSWORD: ...``, :func:`env_name`) instead of pydantic's multi-line report with its
    type codes and URLs."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        if loc:
            loc[0] = env_name(cls, loc[0])
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return lines


def load_settings(cls: type[SettingsT], **given: Any) -> SettingsT:
    """``cls(**given)`` over the environment, or exit 2 with one line per invalid
    variable on stderr: a process started with a bad setting stops before it connects
    anywhere (or binds a port)."""
    try:
        return cls(**given)
    except ValidationError as exc:
        for line in settings_errors(exc, cls):
            print(f"invalid setting: {line}", file=sys.stderr)
        raise SystemExit(2) from None

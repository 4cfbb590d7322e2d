"""The decider's configuration: one frozen settings object, validated at start-up.

Everything the process needs is read once from the environment (the seed's variable
names are kept: ``REDIS_URL``, ``ACTIVE_STRATEGY``, ``LOG_LEVEL``), so a typo or an
unknown strategy fails the start instead of the first request.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bandit_core.strategies import STRATEGIES, normalize_strategy_name
from schemas.ids import DEFAULT_MAX_ARMS, MAX_ARMS_CEILING


def _env(name: str, env: str) -> AliasChoices:
    """Accept the field name (constructor, tests) and the documented env variable."""
    return AliasChoices(name, env)


class DeciderSettings(BaseSettings):
    """Settings of the decider service (env variables in brackets)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    redis_url: str = Field(
        default="redis://localhost:6379/0", validation_alias=_env("redis_url", "REDIS_URL")
    )
    kafka_bootstrap_servers: str = Field(
        default="localhost:9092",
        validation_alias=_env("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    active_strategy: str = Field(
        default="thompson",
        validation_alias=_env("active_strategy", "ACTIVE_STRATEGY"),
        description="Strategy of experiments created without one (seed: UCB1, THOMPSON, ...).",
    )
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = Field(
        default="INFO", validation_alias=_env("log_level", "LOG_LEVEL")
    )
    topic_prefix: str = Field(default="", validation_alias=_env("topic_prefix", "MAB_TOPIC_PREFIX"))
    redis_prefix: str = Field(default="", validation_alias=_env("redis_prefix", "MAB_REDIS_PREFIX"))
    api_host: str = Field(default="0.0.0.0", validation_alias=_env("api_host", "MAB_API_HOST"))
    api_port: int = Field(
        default=8000, ge=1, le=65535, validation_alias=_env("api_port", "MAB_API_PORT")
    )
    http_server: Literal["granian", "uvicorn"] = Field(
        default="granian",
        validation_alias=_env("http_server", "MAB_HTTP_SERVER"),
        description="ASGI server of ``python -m services.decider``: granian (Rust HTTP "
        "stack, ~2x the requests/s of uvicorn on the decision path, see docs/benchmarks.md) "
        "or uvicorn. ``uvicorn services.decider.app:app`` keeps working either way.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias=_env("workers", "MAB_DECIDER_WORKERS"),
        description="Worker processes; they share nothing but Redis and Kafka.",
    )
    snapshot_max_staleness_s: float = Field(
        default=0.25,
        ge=0.0,
        le=60.0,
        validation_alias=_env("snapshot_max_staleness_s", "MAB_SNAPSHOT_MAX_STALENESS_S"),
        description="How old a cached config+snapshot may be before a decision re-reads "
        "Redis (longer for an experiment whose refresh takes more than 5% of it: "
        "services/decider/decisions.py).",
    )
    snapshot_degraded_max_age_s: float = Field(
        default=30.0,
        ge=0.0,
        description="While Redis is down, keep deciding from a cached snapshot this old "
        "(events flagged degraded) instead of answering 503.",
    )
    cache_max_experiments: int = Field(default=10_000, ge=1)
    propensity_samples: int = Field(
        default=1000, ge=1, le=100_000, description="Monte Carlo draws per snapshot (Thompson)."
    )
    kafka_send_timeout_s: float = Field(
        default=5.0, gt=0.0, description="Wait for the broker ack of commands and rewards."
    )
    kafka_enqueue_timeout_s: float = Field(
        default=2.0,
        gt=0.0,
        description="Max time a decision waits for room in the producer's batch (never for "
        "the ack). Waiting is backpressure: an event is dropped (and counted) only when Kafka "
        "has been unable to drain for this long.",
    )
    kafka_linger_ms: int = Field(default=5, ge=0, le=1000)
    kafka_decision_linger_ms: int = Field(
        default=50,
        ge=0,
        le=1000,
        description="linger.ms of the fire-and-forget decision events: fewer, larger "
        "produce requests (measured: at 5 ms librdkafka and the broker spent more CPU per "
        "decision than the decision itself); it only delays when a decision is readable "
        "in the log.",
    )
    kafka_max_batch_bytes: int = Field(
        default=512 * 1024,
        ge=16 * 1024,
        le=1024 * 1024,
        description="Per-partition batch size (librdkafka ``batch.size``): one experiment's "
        "decisions go to one partition, so a small batch caps its rate per round trip.",
    )
    kafka_start_timeout_s: float = Field(
        default=30.0, gt=0.0, description="Keep retrying the first broker connection this long."
    )
    max_arms: int = Field(
        default=DEFAULT_MAX_ARMS,
        ge=2,
        le=MAX_ARMS_CEILING,
        validation_alias=_env("max_arms", "MAB_MAX_ARMS"),
        description="Most arms one experiment may hold (create and add-arms beyond it are "
        f"422); at most {MAX_ARMS_CEILING:,}.",
    )
    max_reward_batch: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        validation_alias=_env("max_reward_batch", "MAB_MAX_REWARD_BATCH"),
        description="Most rewards one POST /rewards may carry (all validated, then produced).",
    )
    redis_socket_timeout_s: float = Field(default=2.0, gt=0.0)
    evaluate_max_decisions: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Off-policy evaluation endpoint: evaluate at most this many (most recent) "
        "decisions.",
    )
    evaluate_max_records: int = Field(
        default=2_000_000,
        ge=1,
        description="Off-policy evaluation endpoint: refuse (422) when the experiment's "
        "partitions hold more records; `mab evaluate` has no bound.",
    )
    evaluate_timeout_s: float = Field(
        default=30.0, gt=0.0, description="Off-policy evaluation: give up when Kafka is silent."
    )
    evaluate_samples: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Off-policy evaluation: Monte Carlo draws per decision (Thompson targets).",
    )
    ready_timeout_s: float = Field(default=1.0, gt=0.0)
    ready_cache_s: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        validation_alias=_env("ready_cache_s", "MAB_READY_CACHE_S"),
        description="How long a /ready verdict is reused, so probes never amplify load "
        "onto Redis and Kafka.",
    )
    # -- security (docs/security.md) ------------------------------------------------------
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias=_env("admin_key", "MAB_ADMIN_KEY"),
        description="Bearer token of admin calls (create, add arms, config). Unset: admin "
        "calls are open, as in the seed (`mab up` always sets one).",
    )
    client_keys: SecretStr | None = Field(
        default=None,
        validation_alias=_env("client_keys", "MAB_CLIENT_KEYS"),
        description="Comma-separated bearer tokens of clients (decision, reward, reads). "
        "Unset: those calls are open.",
    )
    cors_origins: str = Field(
        default="",
        validation_alias=_env("cors_origins", "MAB_CORS_ORIGINS"),
        description="Comma-separated origins allowed by CORS; empty: no CORS headers at all.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        validation_alias=_env("max_body_bytes", "MAB_MAX_BODY_BYTES"),
        description="Larger request bodies get 413 before they are read.",
    )
    rate_limit_per_s: float | None = Field(
        default=None,
        gt=0.0,
        validation_alias=_env("rate_limit_per_s", "MAB_RATE_LIMIT_PER_S"),
        description="Requests per second per key (per client address when unauthenticated), "
        "per worker process; unset: no limit.",
    )
    rate_limit_burst: float | None = Field(
        default=None,
        ge=1.0,
        validation_alias=_env("rate_limit_burst", "MAB_RATE_LIMIT_BURST"),
        description="Token bucket size; default: one second of the rate (at least 1).",
    )

    @field_validator("active_strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        try:
            name = normalize_strategy_name(v)
        except ValueError:
            name = v
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; known: {sorted(STRATEGIES)}")
        return name

    @field_validator("admin_key", "client_keys", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        """``MAB_ADMIN_KEY=`` (empty) means unset, never "the empty key"."""
        if isinstance(v, str) and not v.strip():
            return None
        return v

"""The decider's configuration: one frozen settings object, validated at start-up.

Everything the process needs is read once from the environment (the original API's
variable names are kept: ``REDIS_URL``, ``ACTIVE_STRATEGY``, ``LOG_LEVEL``), so a typo or
an unknown strategy fails the start instead of the first request.

Secure by default: without an admin key the decider refuses to start, unless
``MAB_AUTH=open`` says that admin calls may be served without one, which is allowed only
on a loopback address (docs/security.md). The decider binds 127.0.0.1 unless
``MAB_HOST`` says otherwise; containers set ``MAB_HOST=0.0.0.0``.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from bandit_core.allocation import DEFAULT_RETENTION_S, MAX_RETENTION_S, MIN_RETENTION_S
from bandit_core.strategies import STRATEGIES, normalize_strategy_name
from schemas.ids import DEFAULT_MAX_ARMS, MAX_ARMS_CEILING
from stream_runtime.settings import ServiceSettings


def _env(name: str, *env: str) -> AliasChoices:
    """Accept the field name (constructor, tests) and the documented env variable(s),
    the first one set winning."""
    return AliasChoices(name, *env)


AuthMode = Literal["keys", "open"]


def normalize_known_strategy(value: str) -> str:
    """Canonical strategy name (the original API's spellings too), or ``ValueError``
    listing the known ones: ``ACTIVE_STRATEGY`` and the request bodies' ``strategy``."""
    try:
        name = normalize_strategy_name(value)
    except ValueError:
        name = value
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {value!r}; known strategies: {sorted(STRATEGIES)}")
    return name


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the port on this machine: ``localhost``, an address
    in 127.0.0.0/8 or ``::1``. Other names are not resolved (a name may resolve to
    anything, and differently later), so they count as not loopback."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class DeciderSettings(ServiceSettings):
    """Settings of the decider service (env variables in brackets). The shared ones (the
    Kafka connection, ``REDIS_URL`` and its timeouts, ``MAB_TOPIC_PREFIX``,
    ``MAB_REDIS_PREFIX``, ``LOG_LEVEL``) come from
    :class:`~stream_runtime.settings.ServiceSettings`."""

    active_strategy: str = Field(
        default="thompson",
        validation_alias=_env("active_strategy", "ACTIVE_STRATEGY"),
        description="Strategy of experiments created without one (the original API's "
        "spellings UCB1, THOMPSON, ... work too).",
    )
    api_host: str = Field(
        default="127.0.0.1",
        validation_alias=_env("api_host", "MAB_HOST", "MAB_API_HOST"),
        description="Bind address of ``python -m services.decider`` (``MAB_API_HOST`` is the "
        "older name). Loopback by default: serving other machines is a decision "
        "(containers set 0.0.0.0).",
    )
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
    allocation_retention_s: int = Field(
        default=DEFAULT_RETENTION_S,
        ge=MIN_RETENTION_S,
        le=MAX_RETENTION_S,
        validation_alias=_env("allocation_retention_s", "MAB_ALLOCATION_RETENTION_S"),
        description="How long a stored allocation version stays readable (Redis TTL): "
        "exposures reported against an older version are refused. At least two of the "
        "longest allocation intervals: a version that expired while still current would "
        "be stored again with other weights.",
    )
    sticky_memo_entries: int = Field(
        default=100_000,
        ge=0,
        le=10_000_000,
        validation_alias=_env("sticky_memo_entries", "MAB_STICKY_MEMO_ENTRIES"),
        description="Sticky unit assignments each worker keeps in memory (~200 bytes "
        "each), so a returning unit needs no Redis round trip; 0: always ask Redis.",
    )
    #: A request waits on Redis at most this long (a processor's batch may wait longer).
    redis_socket_timeout_s: float = Field(default=2.0, gt=0, le=300)
    redis_connect_timeout_s: float = Field(default=2.0, gt=0, le=300)
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
    auth: AuthMode = Field(
        default="keys",
        validation_alias=_env("auth", "MAB_AUTH"),
        description="``keys``: admin calls need MAB_ADMIN_KEY, which must be set. ``open``: "
        "admin calls need no key, like the original mab-ecommerce-optimizer API; refused "
        "unless the decider binds a loopback address.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias=_env("admin_key", "MAB_ADMIN_KEY"),
        description="Bearer token of admin calls (create, add arms, config, evaluate). "
        "Required unless MAB_AUTH=open.",
    )
    client_keys: SecretStr | None = Field(
        default=None,
        validation_alias=_env("client_keys", "MAB_CLIENT_KEYS"),
        description="Comma-separated bearer tokens of clients (decision, reward, reads). "
        "Unset: those calls are open.",
    )
    read_keys: SecretStr | None = Field(
        default=None,
        validation_alias=_env("read_keys", "MAB_READ_KEYS"),
        description="Comma-separated bearer tokens that may only read (list, get, stats, "
        "timeseries, evaluate): the dashboard's and analysts' keys.",
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
        return normalize_known_strategy(v)

    @field_validator("admin_key", "client_keys", "read_keys", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        """``MAB_ADMIN_KEY=`` (empty) means unset, never "the empty key"."""
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_mode(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _secure_by_default(self) -> DeciderSettings:
        """An unset admin key is a refusal to start, never silently open admin calls;
        open admin calls are a stated choice (``MAB_AUTH=open``) and stay on this
        machine."""
        if self.auth == "open":
            if self.admin_key is not None:
                raise ValueError(
                    "MAB_AUTH=open and MAB_ADMIN_KEY are both set: unset MAB_ADMIN_KEY to "
                    "serve admin calls without a key, or unset MAB_AUTH to require the key"
                )
            if not is_loopback(self.api_host):
                raise ValueError(
                    f"MAB_AUTH=open serves admin calls without a key, so the decider may "
                    f"only bind a loopback address (127.0.0.1, ::1, localhost), not "
                    f"{self.api_host!r} (MAB_HOST or --host). Set MAB_ADMIN_KEY and unset "
                    "MAB_AUTH to serve other machines"
                )
        elif self.admin_key is None:
            raise ValueError(
                "no admin key: set MAB_ADMIN_KEY (16+ characters, e.g. python -c 'import "
                "secrets; print(secrets.token_urlsafe())'; `mab up` generates one), or set "
                "MAB_AUTH=open to serve admin calls without a key on this machine only "
                "(clients of the original mab-ecommerce-optimizer API; `mab up --open`)"
            )
        return self

"""Settings of the demo traffic generator (one frozen class, validated at start-up)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from stream_runtime.settings import ProcessSettings


class DemoSettings(ProcessSettings):
    """Environment of ``python -m demo_traffic`` (field names are the env vars;
    ``LOG_LEVEL`` comes from :class:`~stream_runtime.settings.ProcessSettings`). It talks
    to the API only, so it reads no Kafka or Redis settings."""

    mab_api_url: str = "http://127.0.0.1:8000"
    #: Bearer token: the admin key (the demo creates its experiment); `mab up` sets it.
    mab_api_key: SecretStr | None = None
    mab_demo_experiment_id: str = "cta-button-test"
    #: Real seconds per simulated day: 360 s makes one simulated hour 15 s.
    mab_demo_seconds_per_day: float = Field(default=360.0, ge=24.0, le=7 * 86400)
    #: Simulated hour of day at start: 7 AM shows the 9 AM shift within 30 s.
    mab_demo_start_hour: float = Field(default=7.0, ge=0.0, lt=24.0)
    #: Decisions per second (each is followed by one reward request).
    mab_demo_rps: float = Field(default=50.0, gt=0.0, le=2000.0)
    mab_demo_concurrency: int = Field(default=8, ge=1, le=256)
    mab_demo_timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)
    mab_demo_max_backoff_s: float = Field(default=10.0, gt=0.0, le=300.0)
    mab_demo_seed: int | None = None

"""One settings base: every process reads the shared variables under the same names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from demo_traffic.settings import DemoSettings
from services.decider.settings import DeciderSettings
from services.projector.settings import ProjectorSettings
from services.reward_consumer.settings import ConsumerSettings
from stream_runtime.settings import ProcessSettings, ServiceSettings, env_name

pytestmark = pytest.mark.unit

SHARED = {
    "REDIS_URL": "redis://elsewhere:6380/2",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
    "MAB_TOPIC_PREFIX": "t-",
    "MAB_REDIS_PREFIX": "r-",
    "LOG_LEVEL": "warning",
}


@pytest.mark.parametrize("cls", [ConsumerSettings, ProjectorSettings, DeciderSettings])
def test_every_service_reads_the_shared_variables(
    cls: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SHARED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAB_AUTH", "open")  # the decider's own rule, irrelevant here
    settings = cls()
    assert settings.redis_url == SHARED["REDIS_URL"]
    assert settings.kafka_bootstrap_servers == SHARED["KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.topics.rewards == "t-mab.rewards"
    assert settings.keys == ServiceSettings(mab_redis_prefix="r-").keys
    assert settings.log_level == "WARNING"


def test_every_process_extends_the_base() -> None:
    for cls in (ConsumerSettings, ProjectorSettings, DeciderSettings):
        assert issubclass(cls, ServiceSettings)
    assert issubclass(DemoSettings, ProcessSettings)
    with pytest.raises(ValidationError, match="unknown log level"):
        DemoSettings(log_level="chatty")


def test_the_deciders_own_defaults_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAB_AUTH", "open")
    settings = DeciderSettings()
    # A request waits on Redis less long than a processor's batch does.
    assert settings.redis_socket_timeout_s == settings.redis_connect_timeout_s == 2.0
    assert ConsumerSettings().redis_socket_timeout_s == 5.0
    assert env_name(DeciderSettings, "mab_topic_prefix") == "MAB_TOPIC_PREFIX"
    assert env_name(DeciderSettings, "redis_url") == "REDIS_URL"

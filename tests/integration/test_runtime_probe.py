"""The stream processors' container probe against the real Kafka and Redis."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deploy.stack.local import LocalStack
from deploy.stack.ports import free_port
from deploy.stack.redis_server import local_redis_url
from tests.integration.conftest import LOCKED_PASSWORD

pytestmark = pytest.mark.integration


def _probe(bootstrap: str, redis_url: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url, **extra}
    return subprocess.run(
        [sys.executable, "-m", "stream_runtime.probe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_probe_passes_when_both_answer_and_names_what_is_down(
    kafka_bootstrap: str, redis_url: str
) -> None:
    ok = _probe(kafka_bootstrap, redis_url)
    assert (ok.returncode, ok.stdout.strip()) == (0, "ready")

    closed = free_port()
    no_kafka = _probe(f"127.0.0.1:{closed}", redis_url)
    assert no_kafka.returncode == 1
    assert "kafka" in no_kafka.stdout
    assert "redis" not in no_kafka.stdout

    no_redis = _probe(kafka_bootstrap, f"redis://127.0.0.1:{closed}/0")
    assert no_redis.returncode == 1
    assert "redis" in no_redis.stdout


def test_probe_says_where_to_set_a_refused_password_and_reads_redis_password(
    kafka_bootstrap: str, locked_redis: LocalStack
) -> None:
    """A compose or Kubernetes container: REDIS_URL without the password, the password
    in REDIS_PASSWORD (from .env or a Secret)."""
    plain = local_redis_url(locked_redis.config.ports.redis, None)
    refused = _probe(kafka_bootstrap, plain, REDIS_PASSWORD="")
    assert refused.returncode == 1
    assert (
        "Redis refused the credentials; give its password in REDIS_URL or REDIS_PASSWORD"
        in refused.stdout
    )
    ok = _probe(kafka_bootstrap, plain, REDIS_PASSWORD=LOCKED_PASSWORD)
    assert (ok.returncode, ok.stdout.strip()) == (0, "ready"), ok.stdout + ok.stderr

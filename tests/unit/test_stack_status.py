"""The rows of ``mab status`` (deploy/stack/status.py): each stream processor shown on the
free metrics port it was started with, and a status call that only reads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack
from deploy.stack.ports import Ports
from deploy.stack.services import ServiceSpec

pytestmark = pytest.mark.unit

#: A stand-in processor: serves an empty registry on MAB_METRICS_PORT like the real ones.
SERVE = (
    "import os, time\n"
    "from prometheus_client import CollectorRegistry\n"
    "from stream_runtime.metrics import MetricsServer\n"
    "MetricsServer(CollectorRegistry(), int(os.environ['MAB_METRICS_PORT']))\n"
    "time.sleep(120)\n"
)


def test_metrics_port_is_free_recorded_and_shown(tmp_path: Path) -> None:
    spec = ServiceSpec(
        name="fake-processor",
        module="stream_runtime.metrics",
        argv=lambda p: [sys.executable, "-c", SERVE],
        metrics_port_env="MAB_METRICS_PORT",
        alive_seconds=1.0,
    )
    stack = LocalStack(StackConfig(tmp_path, Ports.free(), persistent=False), services=[spec])
    stack.start_service(spec)
    try:
        row = next(r for r in stack.status() if r.name == "fake-processor")
        assert row.running
        assert row.port is not None
        assert row.url == f"http://127.0.0.1:{row.port}/metrics"
        assert row.healthy  # the exporter answered on the recorded port
    finally:
        assert stack.stop("fake-processor")
    row = next(r for r in stack.status() if r.name == "fake-processor")
    assert (row.running, row.port, row.url) == (False, None, None)


def test_a_status_call_writes_nothing(tmp_path: Path) -> None:
    """Nothing runs and nothing was ever stored: every row says so, and no secret, pid
    file or scale file is created by asking."""
    stack = LocalStack(StackConfig(tmp_path / "state", Ports.free(), persistent=False))
    rows = {r.name: r for r in stack.status()}
    assert list(rows)[:2] == ["redis", "kafka"]
    assert {"decider", "reward-consumer", "projector", "dashboard"} <= set(rows)
    assert not any(r.running or r.healthy or r.pid for r in rows.values())
    assert rows["kafka"].url == f"127.0.0.1:{stack.config.ports.kafka}"
    assert not (tmp_path / "state").exists()

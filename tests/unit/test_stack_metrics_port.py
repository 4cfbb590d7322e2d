"""``mab up`` gives each stream processor a free metrics port and ``mab status`` shows it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploy.local_stack import LocalStack, Ports, ServiceSpec, StackConfig

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

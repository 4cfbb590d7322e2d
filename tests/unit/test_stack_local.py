"""The orchestration (deploy/stack/local.py): ``down`` stops what the stack started, in
dependency order, including instances and services no longer in the registry; a
throwaway stack leaves nothing behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack, throwaway_stack
from deploy.stack.ports import Ports
from deploy.stack.process import ManagedProcess
from deploy.stack.services import ServiceSpec

pytestmark = pytest.mark.unit

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def _spec(name: str) -> ServiceSpec:
    return ServiceSpec(name=name, module="deploy.stack.local", argv=lambda p: SLEEP)


def test_down_stops_services_then_leftovers_then_kafka_then_redis(tmp_path: Path) -> None:
    """Scenario: the registry has ``a`` and ``b``; ``b.2`` (a scaled instance), ``gone`` (a
    service of an earlier registry), a broker and a Redis also run from this run dir.
    We expect every one stopped, services in reverse registry order first, Redis last."""
    config = StackConfig(tmp_path, Ports.free(), persistent=False)
    started = {
        name: ManagedProcess(name, tmp_path).spawn(SLEEP)[0]
        for name in ("redis", "kafka", "a", "b", "b.2", "gone")
    }
    stack = LocalStack(config, services=[_spec("a"), _spec("b")])
    assert stack.down() == ["b", "a", "b.2", "gone", "kafka", "redis"]
    assert all(ManagedProcess(n, tmp_path).pid() is None for n in started)
    assert stack.down() == []  # idempotent


def test_a_throwaway_stack_stops_and_deletes_everything(tmp_path: Path) -> None:
    with throwaway_stack(tmp_path) as stack:
        run_dir = stack.config.run_dir
        assert run_dir.parent == tmp_path
        assert not stack.config.persistent
        proc = ManagedProcess("helper", run_dir)
        pid, _ = proc.spawn(SLEEP)
        assert proc.alive(pid)
    assert not proc.alive(pid)
    assert not run_dir.exists()

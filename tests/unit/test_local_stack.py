"""Provisioning fails fast with the fix in the message instead of hanging or crashing later."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import local_stack
from deploy.local_stack import (
    LocalStack,
    ManagedProcess,
    Ports,
    StackConfig,
    StackError,
    kafka_server_properties,
    kafka_version,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port held by a socket that is bound but not listening (the sneakiest case)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_port_in_use_gives_one_clear_error(taken_port: int, tmp_path: Path) -> None:
    ports = Ports(redis=taken_port)
    stack = LocalStack(StackConfig(run_dir=tmp_path, ports=ports, persistent=False), services=[])
    with pytest.raises(StackError) as info:
        stack.start_redis()
    assert str(info.value) == (
        f"port {taken_port} is in use by another process; stop it or set MAB_REDIS_PORT"
    )
    assert not (tmp_path / "pids" / "redis.pid").exists()


def test_kafka_port_in_use_names_its_env_var(taken_port: int, tmp_path: Path) -> None:
    stack = LocalStack(
        StackConfig(run_dir=tmp_path, ports=Ports(kafka=taken_port), persistent=False), []
    )
    with pytest.raises(StackError, match=f"port {taken_port} is in use.*MAB_KAFKA_PORT"):
        stack.start_kafka(timeout=1)


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda cmd, *a, **k: None if cmd == "java" else real_which(cmd)
    )
    with pytest.raises(StackError) as info:
        local_stack.ensure_kafka_jars(cache_dir=tmp_path)
    # The one command that installs it (the script make up runs, as root or via sudo).
    command = f"bash {local_stack.SYSTEM_DEPS} stack"
    assert str(info.value).endswith(command)
    assert "`java` not found" in str(info.value)
    assert local_stack.SYSTEM_DEPS.is_file()


def test_missing_maven_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd == "mvn" else "/x")
    with pytest.raises(StackError, match="`mvn` not found") as info:
        local_stack.ensure_kafka_jars(cache_dir=tmp_path)
    assert str(info.value).endswith(f"bash {local_stack.SYSTEM_DEPS} stack")


def test_ports_from_env() -> None:
    ports = Ports.from_env({"MAB_KAFKA_PORT": "19092", "MAB_API_PORT": "18000"})
    assert (ports.kafka, ports.controller, ports.api, ports.redis) == (19092, 19093, 18000, 6379)
    with pytest.raises(StackError, match="MAB_REDIS_PORT"):
        Ports.from_env({"MAB_REDIS_PORT": "http"})


def test_free_ports_are_distinct() -> None:
    ports = Ports.free()
    values = [ports.kafka, ports.controller, ports.redis, ports.api, ports.dashboard]
    assert len(set(values)) == 5


def test_server_properties_have_the_single_node_essentials(tmp_path: Path) -> None:
    text = kafka_server_properties(tmp_path, 19092, 19093)
    for line in (
        "process.roles=broker,controller",
        "node.id=1",
        "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
        "controller.quorum.bootstrap.servers=127.0.0.1:19093",
        "offsets.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        f"log.dirs={tmp_path / 'logs'}",
    ):
        assert line in text.splitlines()
    assert kafka_version().count(".") == 2


def test_stop_never_kills_a_process_that_is_not_ours(tmp_path: Path) -> None:
    """Scenario: our pid file points at a pid that now runs another command (pid reuse).
    We expect stop() to leave that process alone and drop the stale pid file."""
    proc = ManagedProcess("svc", tmp_path)
    pid, _ = proc.spawn([sys.executable, "-c", "import time; time.sleep(30)"])
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        proc.pid_file.write_text(f"{stranger.pid}\n")
        assert proc.pid() is None
        assert not proc.stop(timeout=1)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_stop_terminates_our_process(tmp_path: Path) -> None:
    proc = ManagedProcess("svc", tmp_path)
    pid, _ = proc.spawn([sys.executable, "-c", "import time; time.sleep(30)"])
    assert proc.pid() == pid
    assert proc.stop(timeout=5)
    assert proc.pid() is None
    assert not proc.pid_file.exists()

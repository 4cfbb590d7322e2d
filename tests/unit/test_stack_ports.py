"""A busy port is one clear error naming the variable to set, before any server starts
(deploy/stack/ports.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stack.config import StackConfig
from deploy.stack.errors import StackError
from deploy.stack.local import LocalStack
from deploy.stack.ports import Ports, port_in_use, require_port_free, wait_port_open

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


def test_a_bound_port_is_in_use_and_a_released_one_is_not(taken_port: int) -> None:
    assert port_in_use(taken_port)
    with pytest.raises(StackError, match=f"port {taken_port} is in use.*set MAB_API_PORT"):
        require_port_free(taken_port, "MAB_API_PORT")
    assert not wait_port_open(taken_port, 0.3)  # bound, never listening
    free = Ports.free().api
    assert not port_in_use(free)
    require_port_free(free, "MAB_API_PORT")


def test_ports_from_env() -> None:
    ports = Ports.from_env({"MAB_KAFKA_PORT": "19092", "MAB_API_PORT": "18000"})
    assert (ports.kafka, ports.controller, ports.api, ports.redis) == (19092, 19093, 18000, 6379)
    with pytest.raises(StackError, match="MAB_REDIS_PORT"):
        Ports.from_env({"MAB_REDIS_PORT": "http"})


def test_free_ports_are_distinct() -> None:
    ports = Ports.free()
    values = [ports.kafka, ports.controller, ports.redis, ports.api, ports.dashboard]
    assert len(set(values)) == 5

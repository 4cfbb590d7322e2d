"""The stack's TCP ports on 127.0.0.1: the defaults, their ``MAB_*_PORT`` overrides, and
the probes that turn a busy port into one clear error.

A port is checked before a server is started on it, so a second ``mab up`` beside another
program fails fast with the variable to set, instead of a server that crash-loops or a
client that hangs on someone else's process.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from deploy.stack.errors import StackError

PORT_ENV: Mapping[str, str] = {
    "kafka": "MAB_KAFKA_PORT",
    "controller": "MAB_KAFKA_CONTROLLER_PORT",
    "redis": "MAB_REDIS_PORT",
    "api": "MAB_API_PORT",
    "dashboard": "MAB_DASHBOARD_PORT",
}


@dataclass(frozen=True, slots=True)
class Ports:
    """TCP ports of the stack, all bound on 127.0.0.1."""

    kafka: int = 9092
    controller: int = 9093
    redis: int = 6379
    api: int = 8000
    dashboard: int = 8501

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ports:
        """Defaults overridden by ``MAB_KAFKA_PORT`` etc.; the controller follows Kafka + 1."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for key, var in PORT_ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{var}={raw!r} is not a TCP port number")
            values[key] = int(raw)
        if "kafka" in values and "controller" not in values:
            values["controller"] = values["kafka"] + 1
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports the OS reports free right now (throwaway stacks, parallel sessions)."""
        socks: list[socket.socket] = []
        try:
            for _ in range(5):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            kafka, controller, redis_port, api, dashboard = (s.getsockname()[1] for s in socks)
        finally:
            for s in socks:
                s.close()
        return cls(kafka, controller, redis_port, api, dashboard)


def free_port() -> int:
    """One port the OS reports free right now (a test server, a benchmark baseline)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when someone listens on or holds ``host:port``.

    A bind test catches sockets that are bound but not (yet) listening; SO_REUSEADDR keeps
    TIME_WAIT leftovers of our own previous run from counting as "in use".
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return True
        raise
    finally:
        probe.close()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.settimeout(0.3)
        return conn.connect_ex((host, port)) == 0


def require_port_free(port: int, env_var: str) -> None:
    """Fail fast with the fix instead of letting a server crash-loop or a client hang."""
    if port_in_use(port):
        raise StackError(f"port {port} is in use by another process; stop it or set {env_var}")


def wait_port_open(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Poll until ``host:port`` accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.5)
            if conn.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False

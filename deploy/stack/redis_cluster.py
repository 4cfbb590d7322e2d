"""A local Redis Cluster from Debian's ``redis-server`` (tests, trying cluster mode out).

``N`` masters (3 by default, the smallest cluster Redis accepts) on free ports, each
started with ``--cluster-enabled yes`` in its own folder of a run directory, then joined
with ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`` (which
assigns all 16,384 slots), and ready once every node reports ``cluster_state:ok``.
Nodes are :class:`deploy.stack.process.ManagedProcess` es, so stopping only ever signals
processes we started. Every node requires a password, as the local stack's Redis does
(given, or generated per cluster; in a 0600 config file, never on a command line), so
tests of the cluster exercise authentication too. The services reach it with
``REDIS_URL=redis+cluster://:<password>@127.0.0.1:<port>,...``
(:mod:`stream_runtime.redis_client`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from deploy.stack.errors import StackError
from deploy.stack.ports import free_port, port_in_use
from deploy.stack.process import ManagedProcess, log_tail
from deploy.stack.redis_server import (
    ensure_redis_server,
    local_redis_url,
    redis_auth_config,
    redis_ping,
    redis_server_argv,
)
from deploy.stack.secrets import write_private

#: The smallest cluster ``redis-cli --cluster create`` accepts without replicas.
MIN_MASTERS = 3
#: A node also listens on its port + 10000 (the cluster bus), so ports stop here.
MAX_NODE_PORT = 65535 - 10000


def node_port(taken: set[int]) -> int:
    """A free port whose bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port <= MAX_NODE_PORT and port not in taken and not port_in_use(port + 10000):
            return port
    raise StackError("no free port pair (port, port + 10000) for a cluster node")


def cluster_info(port: int, password: str | None = None, timeout: float = 1.0) -> dict[str, str]:
    """``CLUSTER INFO`` of one node as a dict (empty when it does not answer)."""
    import redis  # lazy: keeps `mab --help` fast

    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        raw = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return {}
    finally:
        client.close()
    if isinstance(raw, dict):  # redis-py parses the reply
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


class LocalRedisCluster:
    """Start, check and stop a local ``masters``-node Redis Cluster without persistence."""

    def __init__(
        self, run_dir: Path, masters: int = MIN_MASTERS, password: str | None = None
    ) -> None:
        if masters < MIN_MASTERS:
            raise StackError(f"a Redis Cluster needs at least {MIN_MASTERS} masters")
        self.run_dir = run_dir
        self.password = password or secrets.token_urlsafe(24)
        taken: set[int] = set()
        for _ in range(masters):
            taken.add(node_port(taken))
        self.ports = sorted(taken)
        self.nodes = [ManagedProcess(f"redis-cluster-{p}", run_dir) for p in self.ports]

    @property
    def url(self) -> str:
        """What the services' ``REDIS_URL`` must be to use this cluster (it holds the
        password: hand it over, do not print it)."""
        auth = f":{quote(self.password, safe='')}@"
        return "redis+cluster://" + auth + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30.0) -> None:
        binary = ensure_redis_server()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise StackError("redis-cli not found; install it: apt-get install -y redis-tools")
        deadline = time.monotonic() + timeout
        for port, node in zip(self.ports, self.nodes, strict=True):
            data = self.run_dir / f"node-{port}"
            data.mkdir(parents=True, exist_ok=True)
            conf = data / "auth.conf"
            write_private(conf, redis_auth_config(self.password))
            # redis-server rewrites its title to "redis-server 127.0.0.1:<port> [cluster]";
            # ManagedProcess recognises it by executable name and port.
            node.spawn(
                [
                    *redis_server_argv(binary, conf, port, data),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                port=port,
            )
        for port, node in zip(self.ports, self.nodes, strict=True):
            while not redis_ping(local_redis_url(port, self.password), timeout=0.5):
                if node.pid() is None or time.monotonic() > deadline:
                    self.stop()
                    raise StackError(
                        f"cluster node on port {port} did not start; log:\n"
                        + log_tail(node.log_file)
                    )
                time.sleep(0.05)
        create = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
            # redis-cli reads the password from here; `-a` would show it in `ps`.
            env={**os.environ, "REDISCLI_AUTH": self.password},
        )
        if create.returncode != 0:
            self.stop()
            raise StackError(f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}")
        while not all(
            cluster_info(p, self.password).get("cluster_state") == "ok" for p in self.ports
        ):
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"cluster not ok within {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self) -> list[int]:
        """Stop every node we started; returns their ports."""
        return [p for p, node in zip(self.ports, self.nodes, strict=True) if node.stop(timeout=5)]


@contextlib.contextmanager
def local_redis_cluster(masters: int = MIN_MASTERS, base: Path | None = None) -> Iterator[str]:
    """A running cluster in a temp dir for the ``with`` block; yields its URL (with the
    cluster's generated password)."""
    run_dir = Path(tempfile.mkdtemp(prefix="mab-redis-cluster-", dir=base))
    cluster = LocalRedisCluster(run_dir, masters)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()
        shutil.rmtree(run_dir, ignore_errors=True)

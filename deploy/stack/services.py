"""The service registry: the one place to add a process ``mab up`` should run.

A :class:`ServiceSpec` says how to start a product process (its argv, a function of the
stack's ports), how to tell it is healthy, which of the stack's keys it is given, and how
it scales on one machine; :data:`SERVICES` lists them in start order (``mab down`` stops
them in reverse).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from deploy.stack.ports import PORT_ENV, Ports
from deploy.stack.secrets import KeyUse

#: How a service runs N instances on one machine: not at all, as N processes of one
#: consumer group (instance 1 keeps the plain name, the others are ``<name>.2`` ...
#: ``<name>.N``), or as one server supervising N workers on one port (``--workers N``:
#: the server's supervisor shares the port).
Scaling = Literal["single", "processes", "workers"]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers a GET with 200 (a service's health check)."""
    import httpx  # lazy: keeps `mab --help` fast

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def metrics_url(port: int) -> str:
    """A stream processor's Prometheus endpoint: its health check and its status URL."""
    return f"http://127.0.0.1:{port}/metrics"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A product process ``mab up`` can start.

    ``module`` is checked with ``importlib.util.find_spec``: a service whose code does not exist
    yet is skipped with a note, so the registry can list services before they are written.
    ``argv`` and ``port`` are functions of the stack's ports (ports come from env at run time).
    ``health_path``: HTTP GET on ``http://127.0.0.1:<port><path>`` must answer 200; without it
    the service counts as healthy once it has stayed alive for ``alive_seconds``.
    ``scaling`` says how ``mab up`` runs N of it (see :data:`Scaling`).
    """

    name: str
    module: str
    argv: Callable[[Ports], list[str]]
    port: Callable[[Ports], int] | None = None
    port_env: str | None = None
    health_path: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    alive_seconds: float = 2.0
    start_timeout: float = 30.0
    #: Env var of a Prometheus exporter port: each start gets a free one, shown in status.
    metrics_port_env: str | None = None
    scaling: Scaling = "single"
    keys: KeyUse = "none"
    #: The topics its consumer group subscribes to, as ``schemas.topics.TopicNames``
    #: fields: members beyond their partition count get no partition (idle).
    consumes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scaling == "processes" and self.port is not None:
            raise ValueError(f"{self.name}: N processes cannot share one port; use workers")

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ModuleNotFoundError, ValueError):
            return False

    def health_url(self, ports: Ports) -> str | None:
        if self.port is None or self.health_path is None:
            return None
        return f"http://127.0.0.1:{self.port(ports)}{self.health_path}"

    def url(self, ports: Ports) -> str | None:
        return None if self.port is None else f"http://127.0.0.1:{self.port(ports)}"


def stream_processor(name: str, package: str, consumes: tuple[str, ...]) -> ServiceSpec:
    """A Kafka-to-Redis processor: N processes of one consumer group, each healthy when
    its Prometheus exporter answers on the free port it was given."""
    return ServiceSpec(
        name=name,
        module=f"{package}.__main__",
        argv=lambda p: [sys.executable, "-m", package],
        metrics_port_env="MAB_METRICS_PORT",
        scaling="processes",
        consumes=consumes,
    )


SERVICES: list[ServiceSpec] = [
    ServiceSpec(
        name="decider",
        module="services.decider.app",
        argv=lambda p: [
            sys.executable,
            "-m",
            "services.decider",
            "--host",
            "127.0.0.1",
            "--port",
            str(p.api),
        ],
        port=lambda p: p.api,
        port_env=PORT_ENV["api"],
        health_path="/health",
        scaling="workers",
        keys="serve",
    ),
    stream_processor(
        "reward-consumer", "services.reward_consumer", ("rewards", "decisions", "exposures")
    ),
    stream_processor("projector", "services.projector", ("rewards", "decisions", "experiments")),
    ServiceSpec(
        name="dashboard",
        module="dashboard.app",
        argv=lambda p: [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "dashboard/app.py",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(p.dashboard),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        port=lambda p: p.dashboard,
        port_env=PORT_ENV["dashboard"],
        health_path="/_stcore/health",
        start_timeout=60.0,
        keys="read",  # it lists, reads stats and time series, evaluates: nothing more
    ),
    ServiceSpec(
        name="demo-traffic",
        module="demo_traffic.__main__",
        argv=lambda p: [sys.executable, "-m", "demo_traffic"],
        # MAB_API_URL comes from LocalStack.service_env() (the decider's port of this stack).
        keys="admin",  # it creates its experiment
    ),
]

"""Fixtures that run the product's services as real processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.harness import wait_ready
from deploy.stack.ports import free_port
from deploy.stack.topics import create_topics
from schemas.topics import topic_specs
from tests.fixtures.faults import service_env

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
#: Loaded next to a scenario: counts the requests sent with and without a key.
AUTH_CENSUS = ROOT / "tests" / "fixtures" / "locust_auth_census.py"


@dataclass
class Services:
    """The running decider and reward consumer of one test module."""

    ns: str
    api_url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = ARTIFACTS / f"{self.ns}{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def start_consumer(self) -> subprocess.Popen[bytes]:
        return self.start("reward_consumer", [sys.executable, "-m", "services.reward_consumer"])

    def stop(self, name: str, kill: bool = False) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


#: The admin key of :func:`keyed_services` (a test value, never a product default).
ADMIN_KEY = "e2e-admin-key-0123456789abcdef"


@contextlib.contextmanager
def running_services(
    kafka_bootstrap: str, redis_url: str, auth_env: dict[str, str]
) -> Iterator[Services]:
    """The decider (its own entry point: granian, one worker, on 127.0.0.1) and the
    reward consumer on a fresh namespace; ``auth_env`` picks the decider's auth mode."""
    ns = f"e{uuid.uuid4().hex[:8]}-"
    create_topics(kafka_bootstrap, topic_specs(ns))
    port = free_port()
    env = service_env(kafka_bootstrap, redis_url, ns, LOG_LEVEL="INFO", **auth_env)
    svc = Services(ns=ns, api_url=f"http://127.0.0.1:{port}", env=env)
    decider = svc.start(
        "decider",
        [sys.executable, "-m", "services.decider", "--host", "127.0.0.1", "--port", str(port)],
    )
    svc.start_consumer()
    try:
        # A cold start on a loaded 2-core machine imports for 15+ s before it listens.
        wait_ready(f"{svc.api_url}/ready", decider, svc.logs["decider"], timeout=90)
        yield svc
    finally:
        svc.stop_all()


@pytest.fixture(scope="module")
def services(kafka_bootstrap: str, redis_url: str) -> Iterator[Services]:
    """The stack as clients of the original API meet it: open mode (``MAB_AUTH=open``,
    loopback), so they work without any key."""
    with running_services(kafka_bootstrap, redis_url, {"MAB_AUTH": "open"}) as svc:
        yield svc


@pytest.fixture(scope="module")
def keyed_services(kafka_bootstrap: str, redis_url: str) -> Iterator[Services]:
    """The stack as `mab up` runs it by default: admin calls need :data:`ADMIN_KEY`."""
    auth = {"MAB_AUTH": "keys", "MAB_ADMIN_KEY": ADMIN_KEY}
    with running_services(kafka_bootstrap, redis_url, auth) as svc:
        yield svc


@dataclass(frozen=True)
class LocustRun:
    """One headless Locust run: its per-name statistics and what the census saw."""

    stats: dict[str, dict[str, Any]]
    census: dict[str, Any]

    def requests(self, name: str) -> int:
        return int(self.stats[name]["num_requests"])

    @property
    def failures(self) -> int:
        return sum(int(s["num_failures"]) for s in self.stats.values())


def run_locust(
    locustfile: Path, host: str, users: int, seconds: int, env: dict[str, str], tmp: Path
) -> LocustRun:
    """``locust --headless`` with all users spawned at once (so their creates race),
    plus the key census; fails the test when Locust itself fails."""
    census_file = tmp / "auth-census.json"
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        f"{locustfile},{AUTH_CENSUS}",
        "--host",
        host,
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--only-summary",
        "--json",
        "--exit-code-on-error",
        "1",
    ]
    run = subprocess.run(
        argv,
        env={**env, "MAB_AUTH_CENSUS_FILE": str(census_file)},
        capture_output=True,
        text=True,
        timeout=seconds + 80,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    stats = {s["name"]: s for s in json.loads(run.stdout)}
    return LocustRun(stats, json.loads(census_file.read_text()))

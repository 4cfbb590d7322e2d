"""Fixtures that run the product's services as real processes for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from deploy.local_stack import create_topics, free_port
from schemas.topics import topic_specs

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


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


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def services(kafka_bootstrap: str, redis_url: str) -> Iterator[Services]:
    """Start the decider (its own entry point: granian, one worker) and the reward consumer."""
    ns = f"e{uuid.uuid4().hex[:8]}-"
    create_topics(kafka_bootstrap, topic_specs(ns))
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
        "MAB_CONSUMER_GROUP_ID": f"{ns}reward-consumer",
        "LOG_LEVEL": "INFO",
    }
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

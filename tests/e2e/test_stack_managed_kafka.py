"""The whole product over a SASL_SSL listener, as against a managed Kafka.

The services and the ``mab`` commands run as processes and get nothing but the
``KAFKA_*`` variables a Confluent Cloud, MSK or Aiven user would set (SCRAM-SHA-512, a CA
file); the broker's PLAINTEXT listener is never given to them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from bench.harness import wait_ready
from deploy.stack.ports import free_port
from schemas.topics import TopicNames, partition_key
from stream_runtime.acked_producer import AckedProducer, OutRecord
from tests.e2e.conftest import Services
from tests.fixtures.secure_kafka import SecureKafka
from tests.integration.test_stack_kafka_security import WRONG_PASSWORD, untrusted

pytestmark = pytest.mark.e2e

ADMIN_KEY = "managed-kafka-admin-key"
#: A refused password must end a process long before this (see FAIL_FAST_S).
START_TIMEOUT_S = "120"
#: Process start (imports on a loaded 2-core machine) plus one metadata round.
FAIL_FAST_S = 60.0


@dataclass
class SecureStack:
    services: Services
    exp: str

    @property
    def ns(self) -> str:
        return self.services.ns


def mab(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mab_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def secure_stack(secure_kafka: SecureKafka, redis_url: str) -> Iterator[SecureStack]:
    """Topics created by `mab topics create`, then the decider, the reward consumer and
    the projector, all through the SASL_SSL listener."""
    ns = f"s{uuid.uuid4().hex[:8]}-"
    env = {
        **os.environ,
        **secure_kafka.env(),
        "REDIS_URL": redis_url,
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
        "MAB_CONSUMER_GROUP_ID": f"{ns}reward-consumer",
        "MAB_PROJECTOR_GROUP_ID": f"{ns}projector",
        "MAB_ADMIN_KEY": ADMIN_KEY,
        "LOG_LEVEL": "INFO",
    }
    created = mab(env, "topics", "create")
    assert created.returncode == 0, created.stderr
    port = free_port()
    svc = Services(ns=ns, api_url=f"http://127.0.0.1:{port}", env=env)
    decider = svc.start(
        "decider",
        [sys.executable, "-m", "services.decider", "--host", "127.0.0.1", "--port", str(port)],
    )
    svc.start_consumer()
    svc.start("projector", [sys.executable, "-m", "services.projector"])
    try:
        wait_ready(f"{svc.api_url}/ready", decider, svc.logs["decider"], timeout=90)
        yield SecureStack(svc, f"{ns}checkout")
    finally:
        svc.stop_all()


async def produce(producer: AckedProducer, record: OutRecord) -> None:
    await producer.start()
    try:
        await producer.send([record])
    finally:
        await producer.stop()


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


def test_the_whole_loop_runs_over_sasl_ssl(
    secure_kafka: SecureKafka, secure_stack: SecureStack
) -> None:
    """Scenario: create an experiment, serve 30 decisions and reward each, and produce one
    reward for an arm that does not exist straight into the rewards topic.
    We expect: the fold counts 30 pulls, the projector's minute buckets hold 30 rewards,
    the bad record is in the DLQ with reason unknown_arm, and `mab replay --verify` finds
    the rebuilt state identical (exit 0)."""
    svc, exp = secure_stack.services, secure_stack.exp
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=svc.api_url, timeout=10) as api:
        created = api.post(
            "/experiments",
            json={"experiment_id": exp, "arm_ids": ["a", "b"], "strategy": "thompson"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        for i in range(30):
            d = api.get("/decision", params={"experiment_id": exp}).json()
            reward = {
                "experiment_id": exp,
                "arm_id": d["arm_id"],
                "reward": float(i % 3 == 0),
                "decision_id": d["decision_id"],
            }
            assert api.post("/reward", json=reward).status_code == 200

        def folded() -> bool:
            stats = api.get(f"/experiments/{exp}/stats").json()
            return sum(int(arm["pulls"]) for arm in stats["arms"]) == 30

        def projected() -> bool:
            series = api.get(f"/experiments/{exp}/timeseries", params={"bucket": "minute"})
            return sum(int(p["rewards"]) for p in series.json()["points"]) == 30

        _until(folded, "the fold of 30 rewards")
        _until(projected, "the projection of 30 rewards")

    bad = {"experiment_id": exp, "arm_id": "no-such-arm", "reward": 1.0, "event_id": "bad-1"}
    record = OutRecord(
        TopicNames.with_prefix(secure_stack.ns).rewards, orjson.dumps(bad), partition_key(exp)
    )
    asyncio.run(produce(AckedProducer(secure_kafka.connection(), "test-bad-record"), record))

    def dead_lettered() -> bool:
        counted = mab(svc.env, "dlq", "count", "--json")
        assert counted.returncode == 0, counted.stderr
        return bool(json.loads(counted.stdout)["by_reason"].get("unknown_arm") == 1)

    _until(dead_lettered, "the dead letter of the bad record")
    verified = mab(svc.env, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "identical" in verified.stdout


#: Every long-running service and the commands that talk to Kafka.
COMMANDS: dict[str, list[str]] = {
    # A free port that is never bound: the Kafka check comes before the server starts.
    "decider": [*[sys.executable, "-m", "services.decider"], *["--port", str(free_port())]],
    "reward consumer": [sys.executable, "-m", "services.reward_consumer"],
    "projector": [sys.executable, "-m", "services.projector"],
    "mab topics create": [sys.executable, "-m", "mab_cli.main", "topics", "create"],
    "mab replay --verify": [sys.executable, "-m", "mab_cli.main", "replay", "--verify"],
    "mab dlq count": [sys.executable, "-m", "mab_cli.main", "dlq", "count"],
    "mab evaluate": [
        *[sys.executable, "-m", "mab_cli.main", "evaluate"],
        *["--experiment", "checkout", "--strategy", "ucb1"],
    ],
}


@pytest.mark.parametrize("case", ["wrong password", "untrusted CA"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_refused_connection_stops_every_process_with_the_setting_named(
    secure_kafka: SecureKafka, redis_url: str, command: str, case: str
) -> None:
    """Scenario: start the process with a wrong password (or a CA that did not sign the
    broker's certificate) and a two-minute start timeout.
    We expect: a non-zero exit well within that, with the exact error text."""
    if case == "wrong password":
        bad, expected = {"KAFKA_SASL_PASSWORD": "not-the-password"}, WRONG_PASSWORD
    else:
        bad, expected = (
            {"KAFKA_SSL_CA_LOCATION": str(secure_kafka.other_ca)},
            untrusted(secure_kafka),
        )
    env = {
        **os.environ,
        **secure_kafka.env(**bad),
        "KAFKA_START_TIMEOUT_S": START_TIMEOUT_S,
        "REDIS_URL": redis_url,
        "MAB_TOPIC_PREFIX": "refused-",
        "MAB_REDIS_PREFIX": "refused-",
        "MAB_AUTH": "open",  # the decider's other settings are valid: only Kafka refuses
    }
    started = time.monotonic()
    done = subprocess.run(
        COMMANDS[command], env=env, capture_output=True, text=True, timeout=150, check=False
    )
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert expected in output, output
    assert elapsed < FAIL_FAST_S, f"{command} took {elapsed:.1f} s to give up"

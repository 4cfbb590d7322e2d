"""The local stack really scales the product's services: N consumers in one group, N
projectors in another, N decider workers on one port; then back down."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack
from deploy.stack.ports import Ports
from deploy.stack.services import SERVICES, ServiceSpec

pytestmark = pytest.mark.integration


async def group_members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described: Any = (await admin.describe_consumer_groups([group]))[0].to_object()
    finally:
        await admin.close()
    return len(described["groups"][0]["members"])


async def wait_members(bootstrap: str, group: str, n: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while (got := await group_members(bootstrap, group)) != n:
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group} has {got} members, wanted {n}")
        await asyncio.sleep(0.5)


@pytest.fixture
def specs(kafka_bootstrap: str, redis_url: str, ns: str) -> list[ServiceSpec]:
    """The registry's decider, reward consumer and projector, pointed at the test broker
    and Redis under this test's namespace (no private Kafka needed)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "MAB_REDIS_PREFIX": ns,
        "MAB_CONSUMER_GROUP_ID": f"{ns}consumer",
        "MAB_PROJECTOR_GROUP_ID": f"{ns}projector",
        "LOG_LEVEL": "WARNING",
    }
    wanted = ("decider", "reward-consumer", "projector")
    # start_timeout: N workers import the app at once on a shared 2-core machine.
    return [
        dataclasses.replace(s, env=env, start_timeout=120) for s in SERVICES if s.name in wanted
    ]


@pytest.fixture
def config(tmp_path: Path, ns: str, topics: dict[str, int]) -> Iterator[StackConfig]:
    cfg = StackConfig(run_dir=tmp_path, ports=Ports.free(), persistent=False, topic_prefix=ns)
    yield cfg
    LocalStack(cfg, services=SERVICES).down()


@pytest.mark.timeout(300)
async def test_services_scale_up_and_down(
    kafka_bootstrap: str, ns: str, config: StackConfig, specs: list[ServiceSpec]
) -> None:
    """Scenario: the stack starts the decider with 2 workers, 3 reward consumers and 2
    projectors; the same request again; then 1 of each.
    We expect: every instance and worker listed and healthy, the consumer groups have 3
    and 2 members, both workers serve the one port, a repeated request restarts
    nothing, and scaling down leaves one member per group and no worker rows."""
    stack = LocalStack(
        config, services=specs, scale={"decider": 2, "reward-consumer": 3, "projector": 2}
    )
    stack.start_services(note=lambda _: None)
    rows = {r.name: r for r in stack.status()}
    expected = stack.expected()
    assert set(expected) - {"redis", "kafka"} == {
        "decider",
        "decider.w1",
        "decider.w2",
        "reward-consumer",
        "reward-consumer.2",
        "reward-consumer.3",
        "projector",
        "projector.2",
    }
    for name in expected[2:]:
        assert rows[name].running, name
        assert rows[name].healthy, name
    await wait_members(kafka_bootstrap, f"{ns}consumer", 3)
    await wait_members(kafka_bootstrap, f"{ns}projector", 2)

    api = f"http://127.0.0.1:{config.ports.api}"
    auth = {"Authorization": f"Bearer {stack.secrets.admin_key().value}"}
    async with httpx.AsyncClient(base_url=api, timeout=10, headers=auth) as client:
        created = await client.post(
            "/experiments", json={"experiment_id": "scaled", "arm_ids": ["a", "b"]}
        )
        assert created.status_code == 201, created.text
        racing = await asyncio.gather(
            *(
                client.post("/experiments", json={"experiment_id": "race", "arm_ids": ["a", "b"]})
                for _ in range(8)
            )
        )
        assert sorted(r.status_code for r in racing) == [201] + [409] * 7
        decisions = await asyncio.gather(
            *(client.get("/decision", params={"experiment_id": "scaled"}) for _ in range(50))
        )
    assert {d.status_code for d in decisions} == {200}
    assert len({d.json()["decision_id"] for d in decisions}) == 50

    pids = {r.name: r.pid for r in stack.status()}
    again = LocalStack(config, services=specs)  # same counts, from scale.json
    again.start_services(note=lambda _: None)
    assert {r.name: r.pid for r in again.status()} == pids

    down = LocalStack(
        config, services=specs, scale={"decider": 1, "reward-consumer": 1, "projector": 1}
    )
    down.start_services(note=lambda _: None)
    names = [r.name for r in down.status() if r.name not in ("redis", "kafka")]
    assert names == ["decider", "reward-consumer", "projector"]
    await wait_members(kafka_bootstrap, f"{ns}consumer", 1)
    await wait_members(kafka_bootstrap, f"{ns}projector", 1)

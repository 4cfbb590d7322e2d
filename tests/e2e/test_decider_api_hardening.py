"""The decider as a real process with API keys, on the real Kafka + Redis (``ns`` prefixes).

Hostile input: schemathesis over every operation of its live OpenAPI document.

We expect no 5xx anywhere, only documented status codes and content types, and every
response body to validate against its documented schema. Examples are bounded per
operation so the run stays around a minute.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.harness import wait_ready
from dashboard.api import explain, make_client
from demo_traffic.runner import DemoTraffic
from demo_traffic.settings import DemoSettings
from deploy.stack.ports import free_port
from deploy.stack.topics import create_topics
from mab_client import AuthError
from schemas.topics import topic_specs
from services.decider.app import create_app
from tests.e2e.conftest import Services
from tests.fixtures.faults import service_env

pytestmark = pytest.mark.e2e

ADMIN_KEY = "schemathesis-admin-key-0123456789"
CLIENT_KEY = "schemathesis-client-key-0123456789"
READ_KEY = "schemathesis-read-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def keyed_decider(kafka_bootstrap: str, redis_url: str) -> Iterator[Services]:
    """The decider as a process with admin and client keys, on its own namespace; one
    experiment exists so generated ids sometimes hit it."""
    ns = f"s{uuid.uuid4().hex[:8]}-"
    create_topics(kafka_bootstrap, topic_specs(ns))
    port = free_port()
    env = service_env(
        kafka_bootstrap,
        redis_url,
        ns,
        MAB_AUTH="keys",
        MAB_ADMIN_KEY=ADMIN_KEY,
        MAB_CLIENT_KEYS=CLIENT_KEY,
        MAB_READ_KEYS=READ_KEY,
    )
    svc = Services(ns=ns, api_url=f"http://127.0.0.1:{port}", env=env)
    argv = [sys.executable, "-m", "uvicorn", "services.decider.app:app", "--port", str(port)]
    decider = svc.start("decider", [*argv, "--host", "127.0.0.1", "--no-access-log"])
    try:
        wait_ready(f"{svc.api_url}/ready", decider, svc.logs["decider"])
        body = {"experiment_id": "cta-button-test", "arm_ids": ["blue-button", "green-button"]}
        r = httpx.post(f"{svc.api_url}/experiments", json=body, headers=ADMIN, timeout=10)
        assert r.status_code == 201, r.text
        yield svc
    finally:
        svc.stop_all()


@pytest.fixture(scope="module")
def api_schema(keyed_decider: Services) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{keyed_decider.api_url}/openapi.json")


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """Every (method, path) of the decider's OpenAPI, read from the app without I/O.

    Parametrized at collection time so each operation is its own test; the live schema
    is loaded from the running process in the test (schemathesis' ``from_fixture`` does
    not work with pytest 9).
    """
    spec = create_app().openapi()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append((method.upper(), path, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):  # else nothing can be invalid
                out.append((method.upper(), path, GenerationMode.NEGATIVE))
    return out


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_every_operation_conforms(
    api_schema: schemathesis.schemas.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    """Valid (positive) and schema-violating (negative) requests of one operation."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=int(os.environ.get("MAB_SCHEMATHESIS_EXAMPLES", "30")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=ADMIN, checks=CHECKS, timeout=10)

    check()


async def test_original_api_workflow_with_keys_and_the_bundled_clients(
    keyed_decider: Services,
) -> None:
    """Scenario: a decider with admin and client keys, as `mab up` runs it plus client keys.
    We expect the original API's workflow to work once the header is added (and to be refused
    without it), the demo traffic (MAB_API_KEY = admin key) to create its experiment and
    serve visitors, and the dashboard's client to read (and evaluate) with a read key, as
    `mab up` gives it, and to say which variable to set when it has none."""
    url = keyed_decider.api_url
    client_h = {"Authorization": f"Bearer {CLIENT_KEY}"}
    exp = f"{keyed_decider.ns}original"
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        body = {"experiment_id": exp, "arm_ids": ["blue-button", "green-button"]}
        assert (await c.post("/experiments", json=body)).status_code == 401
        assert (await c.post("/experiments", json=body, headers=client_h)).status_code == 403
        assert (await c.post("/experiments", json=body, headers=ADMIN)).status_code == 201
        q = {"experiment_id": exp}
        assert (await c.get("/decision", params=q)).status_code == 401
        r = await c.get("/decision", params=q, headers=client_h)
        assert r.status_code == 200
        reward = {"experiment_id": exp, "arm_id": r.json()["arm_id"], "reward": 1.0}
        assert (await c.post("/reward", json=reward, headers=client_h)).status_code == 200
        cfg = {"experiment_id": exp, "strategy": "ucb1"}
        assert (await c.post("/config", json=cfg, headers=ADMIN)).status_code == 200

    demo = DemoTraffic(
        DemoSettings(
            mab_api_url=url,
            mab_api_key=SecretStr(ADMIN_KEY),
            mab_demo_experiment_id=f"{keyed_decider.ns}demo",
            mab_demo_rps=50,
            mab_demo_concurrency=2,
        )
    )
    stop = asyncio.Event()
    task = asyncio.create_task(demo.run(stop))
    for _ in range(300):  # 30 s at most
        if demo.stats.rewards >= 10:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await task
    assert demo.stats.rewards >= 10

    dashboard = make_client(url, READ_KEY)
    stats = await asyncio.to_thread(dashboard.stats, exp)
    assert stats.strategy == "ucb1"
    report = await asyncio.to_thread(dashboard.evaluate, exp, "thompson", {})
    assert report.experiment_id == exp
    with pytest.raises(AuthError, match="needs a read key or the admin key"):
        await asyncio.to_thread(make_client(url, CLIENT_KEY).evaluate, exp, "thompson", {})
    with pytest.raises(AuthError) as refused:
        await asyncio.to_thread(make_client(url, None).list_experiments, limit=1000)
    assert "MAB_API_KEY" in explain(refused.value, url)

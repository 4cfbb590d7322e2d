"""Hostile input against the live decider: schemathesis over every operation of its
OpenAPI document, served by a real process on the real Kafka + Redis (``ns`` prefixes).

We expect no 5xx anywhere, only documented status codes and content types, and every
response body to validate against its documented schema. Examples are bounded per
operation so the run stays around a minute.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deploy.local_stack import create_topics, free_port
from schemas.topics import topic_specs
from services.decider.app import create_app
from services.decider.settings import DeciderSettings
from tests.e2e.conftest import Services, wait_ready

pytestmark = pytest.mark.e2e

ADMIN_KEY = "schemathesis-admin-key-0123456789"
CLIENT_KEY = "schemathesis-client-key-0123456789"
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
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
        "MAB_ADMIN_KEY": ADMIN_KEY,
        "MAB_CLIENT_KEYS": CLIENT_KEY,
        "LOG_LEVEL": "WARNING",
    }
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
    spec = create_app(DeciderSettings()).openapi()
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
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=ADMIN, checks=CHECKS, timeout=10)

    check()

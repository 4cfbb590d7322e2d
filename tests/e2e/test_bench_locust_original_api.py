"""Clients of the original mab-ecommerce-optimizer API, unchanged, against the stack in
open mode (``MAB_AUTH=open``, what ``mab up --open`` runs): the keyless Locust scenario
(bench/locustfile_original_api.py) must run without a single failure, and what it sent
must reach the statistics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, Services, run_locust

pytestmark = pytest.mark.e2e

LOCUSTFILE = ROOT / "bench" / "locustfile_original_api.py"


@pytest.mark.timeout(150)
def test_original_api_clients_work_without_any_key(services: Services, tmp_path: Path) -> None:
    """Scenario: 8 users start at once, each creates the same experiment without a key,
    then decides about five times per reward, rewards in the original shape (no decision
    id), never sending an Authorization header.
    We expect: 0 failures; exactly one create answered 201 and the others 409; no request
    with a key; every reward and every decision folded into the statistics; /ready says
    the decider is open, with the warning."""
    exp = f"{services.ns}original-api"
    users = 8
    env = {**os.environ, "MAB_LOCUST_EXPERIMENT": exp}
    env.pop("MAB_ADMIN_KEY", None)
    run = run_locust(LOCUSTFILE, services.api_url, users, 8, env, tmp_path)

    assert run.failures == 0, run.stats
    status = run.census["status"]
    assert status.get("/experiments 201") == 1, status
    assert status.get("/experiments 409") == users - 1, status
    decisions = run.requests("/decision")
    rewards = run.requests("/reward")
    assert run.census == {
        "with_key": 0,
        "without_key": users + decisions + rewards,
        "status": {
            "/experiments 201": 1,
            "/experiments 409": users - 1,
            "/decision 200": decisions,
            "/reward 200": rewards,
        },
    }
    assert rewards >= 30, run.stats
    assert 3 <= decisions / rewards <= 9, (decisions, rewards)  # about five to one

    # The stats are read without a key too. Rewards without a decision id all count; a
    # user stopped mid-request may leave one call answered but not counted by Locust.
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=services.api_url, timeout=10) as client:
        while True:
            arms = client.get(f"/experiments/{exp}/stats").raise_for_status().json()["arms"]
            pulls = sum(a["pulls"] for a in arms)
            served = sum(a["decisions"] for a in arms)
            if pulls >= rewards and served >= decisions:
                break
            assert time.monotonic() < deadline, (pulls, rewards, served, decisions)
            time.sleep(0.2)
        assert pulls + served <= rewards + decisions + users
        ready = client.get("/ready").json()
    assert ready["status"] == "ready"
    assert ready["auth"] == "open"
    assert "without an API key" in ready["warning"]

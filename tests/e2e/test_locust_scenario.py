"""The seed's Locust scenario (bench/locustfile.py) against the real decider and reward
consumer: a short headless run must have no failures and the right traffic mix, and its
joined rewards must reach the statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mab_client import MabClient
from tests.e2e.conftest import Services

pytestmark = pytest.mark.e2e

LOCUSTFILE = Path(__file__).resolve().parents[2] / "bench" / "locustfile.py"


@pytest.mark.timeout(120)
def test_locust_scenario_runs_clean(services: Services) -> None:
    exp = f"{services.ns}locust"
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        services.api_url,
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "6s",
        "--only-summary",
        "--json",
        "--exit-code-on-error",
        "1",
    ]
    env = {**os.environ, "MAB_LOCUST_EXPERIMENT": exp}
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = {s["name"]: s for s in json.loads(run.stdout)}
    assert all(s["num_failures"] == 0 for s in stats.values()), stats
    decisions = stats["/decision"]["num_requests"]
    rewards = stats["/reward"]["num_requests"]
    assert decisions >= 20
    assert 0 < rewards < decisions  # the seed's mix: about five decisions per reward
    # Every answered decision is folded once; a user stopped mid-request may leave one
    # decision answered but not counted by Locust.
    users = 4
    deadline = time.monotonic() + 20
    with MabClient(services.api_url, timeout=10) as mab:
        assert mab.get_experiment(exp).strategy == "thompson"
        while (total := sum(a.decisions for a in mab.stats(exp).arms)) < decisions:
            assert time.monotonic() < deadline, f"folded {total} of {decisions} decisions"
            time.sleep(0.1)
    assert total <= decisions + users

"""The project's Locust scenario (bench/locustfile.py) against the real decider and
reward consumer as `mab up` runs them by default (admin key required): a short headless
run must send the key on every request, have no failures and the right traffic mix, and
its joined rewards must reach the statistics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mab_client import MabClient
from tests.e2e.conftest import ADMIN_KEY, ROOT, Services, run_locust

pytestmark = pytest.mark.e2e

LOCUSTFILE = ROOT / "bench" / "locustfile.py"


@pytest.mark.timeout(120)
def test_locust_scenario_runs_clean(keyed_services: Services, tmp_path: Path) -> None:
    services = keyed_services
    exp = f"{services.ns}locust"
    users = 4
    env = {**os.environ, "MAB_LOCUST_EXPERIMENT": exp, "MAB_ADMIN_KEY": ADMIN_KEY}
    run = run_locust(LOCUSTFILE, services.api_url, users, 6, env, tmp_path)
    assert run.failures == 0, run.stats
    decisions = run.requests("/decision")
    rewards = run.requests("/reward")
    assert decisions >= 20
    assert 0 < rewards < decisions  # the original API's mix: about five decisions per reward
    assert run.census["without_key"] == 0, run.census
    assert run.census["with_key"] == decisions + rewards + users
    # Every answered decision is folded once; a user stopped mid-request may leave one
    # decision answered but not counted by Locust.
    deadline = time.monotonic() + 20
    with MabClient(services.api_url, timeout=10) as mab:
        assert mab.get_experiment(exp).strategy == "thompson"
        while (total := sum(a.decisions for a in mab.stats(exp).arms)) < decisions:
            assert time.monotonic() < deadline, f"folded {total} of {decisions} decisions"
            time.sleep(0.1)
    assert total <= decisions + users

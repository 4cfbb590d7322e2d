"""The project's Locust scenario: a storefront's traffic mix against the decider.

Five ``GET /decision`` per ``POST /reward`` (decisions are per page view, conversions are
rarer), the experiment created on start by every user with ``409`` expected when users
race, Thompson sampling (the production default). Rewards carry their decision's id, so
the load exercises the joined path. Locust's own HTTP client is used (not ``mab_client``)
so that every request is one measured sample, retries included.

Every request sends a key, as on the default stack: ``MAB_ADMIN_KEY`` (the create is an
admin call), and ``MAB_API_KEY`` for decisions and rewards when set (a client key, for a
decider with ``MAB_CLIENT_KEYS``), else the admin key. Clients of the original API that
send no key: ``bench/locustfile_original_api.py`` against ``mab up --open``.

    export MAB_ADMIN_KEY=$(cat .state/admin_key)
    locust -f bench/locustfile.py --host http://127.0.0.1:8000
    # headless, CSV export:
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless \
        -u 50 -r 10 -t 1m --csv bench-results/locust
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import HttpUser, between, task

from bench.locust_calls import create_experiment, decide, reward

EXPERIMENT = os.environ.get("MAB_LOCUST_EXPERIMENT", "locust-cta-test")
ARMS = ["blue-button", "green-button", "red-button"]
#: True conversion rates of the simulated visitors (green converts best).
RATES = {"blue-button": 0.05, "green-button": 0.12, "red-button": 0.08}
ADMIN_KEY = os.environ.get("MAB_ADMIN_KEY", "").strip()
CLIENT_KEY = os.environ.get("MAB_API_KEY", "").strip() or ADMIN_KEY


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


class Storefront(HttpUser):
    """One storefront back end: decides per page view, reports some conversions."""

    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        self.pending: list[dict[str, Any]] = []
        body = {"experiment_id": EXPERIMENT, "arm_ids": ARMS, "strategy": "thompson"}
        create_experiment(self.client, body, _bearer(ADMIN_KEY))

    @task(5)
    def decision(self) -> None:
        decision = decide(self.client, EXPERIMENT, RATES, _bearer(CLIENT_KEY))
        if decision is not None:
            self.pending.append(decision)
            del self.pending[:-100]  # keep the newest decisions only

    @task(1)
    def conversion(self) -> None:
        if not self.pending:
            return
        d = self.pending.pop(random.randrange(len(self.pending)))
        converted = random.random() < RATES.get(d["arm_id"], 0.0)
        body = {
            "experiment_id": EXPERIMENT,
            "arm_id": d["arm_id"],
            "reward": 1.0 if converted else 0.0,
            "decision_id": d["decision_id"],
        }
        reward(self.client, body, _bearer(CLIENT_KEY))

"""Clients of the original mab-ecommerce-optimizer API, unchanged: no API key anywhere.

The traffic its load test describes, written for this project: every user creates the
same experiment when it starts, without a key, and takes ``409`` (another user won the
race) as expected; then about five ``GET /decision`` per ``POST /reward``, the reward in
the original shape (experiment, arm, reward: no decision id). No request carries an
``Authorization`` header. It needs a decider in open mode (``MAB_AUTH=open``), the
migration path for such clients (README, "Coming from the original API"):

    mab up --open
    locust -f bench/locustfile_original_api.py --host http://127.0.0.1:8000 --headless \\
        -u 200 -r 50 -t 40s --only-summary

Against the default stack every create is a 401 (admin calls need the key there): use
``bench/locustfile.py`` with ``MAB_ADMIN_KEY`` instead.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

EXPERIMENT = os.environ.get("MAB_LOCUST_EXPERIMENT", "original-api-hero-banner")
ARMS = ["banner-sale", "banner-new-in", "banner-free-shipping"]
#: How often a shown banner converts (the simulated shoppers prefer free shipping).
RATES = {"banner-sale": 0.04, "banner-new-in": 0.06, "banner-free-shipping": 0.10}


class OriginalApiShopper(HttpUser):
    """A storefront written against the original API: it never heard of keys."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.shown: list[str] = []
        body = {"experiment_id": EXPERIMENT, "arm_ids": ARMS, "strategy": "thompson"}
        with self.client.post(
            "/experiments", json=body, name="/experiments", catch_response=True
        ) as resp:
            if resp.status_code in (201, 409):
                resp.success()
            else:
                resp.failure(f"create: HTTP {resp.status_code} {resp.text[:200]}")

    @task(5)
    def decision(self) -> None:
        with self.client.get(
            "/decision",
            params={"experiment_id": EXPERIMENT},
            name="/decision",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"decision: HTTP {resp.status_code} {resp.text[:200]}")
                return
            arm = resp.json().get("arm_id")
            if arm not in RATES:
                resp.failure(f"decision: arm {arm!r} is not one of {ARMS}")
                return
            self.shown.append(arm)
            del self.shown[:-50]

    @task(1)
    def reward(self) -> None:
        if not self.shown:
            return
        arm = self.shown.pop(random.randrange(len(self.shown)))
        body = {
            "experiment_id": EXPERIMENT,
            "arm_id": arm,
            "reward": 1.0 if random.random() < RATES[arm] else 0.0,
        }
        with self.client.post("/reward", json=body, name="/reward", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"reward: HTTP {r.status_code} {r.text[:200]}")

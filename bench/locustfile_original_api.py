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

from bench.locust_calls import create_experiment, decide, reward

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
        create_experiment(self.client, body)

    @task(5)
    def decision(self) -> None:
        decision = decide(self.client, EXPERIMENT, RATES)
        if decision is not None:
            self.shown.append(decision["arm_id"])
            del self.shown[:-50]

    @task(1)
    def conversion(self) -> None:
        if not self.shown:
            return
        arm = self.shown.pop(random.randrange(len(self.shown)))
        converted = random.random() < RATES[arm]
        reward(
            self.client, {"experiment_id": EXPERIMENT, "arm_id": arm, "reward": float(converted)}
        )

"""The demo traffic generator through the SDK: decisions joined to rewards, and a stack
that is down at first (503, refused connections) is waited out, never crashed on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from demo_traffic.runner import DemoTraffic
from demo_traffic.settings import DemoSettings
from mab_client import AsyncMabClient, RetryPolicy

pytestmark = pytest.mark.unit


class FakeDecider:
    """Answers like the decider; the first ``down`` requests find the API unavailable."""

    def __init__(self, down: int, stop: asyncio.Event, rewards_wanted: int) -> None:
        self.down = down
        self.stop = stop
        self.wanted = rewards_wanted
        self.served: dict[str, str] = {}
        self.rewards: list[dict[str, Any]] = []
        self.creates = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down > 0:
            self.down -= 1
            if self.down % 2:
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(503, json={"detail": "starting"})
        if request.url.path == "/experiments":
            self.creates += 1
            return httpx.Response(409 if self.creates > 1 else 201, json=_created(request))
        if request.url.path == "/decision":
            did = f"{len(self.served):032x}.1"
            self.served[did] = "green-button"
            return httpx.Response(
                200,
                json={
                    "experiment_id": request.url.params["experiment_id"],
                    "arm_id": "green-button",
                    "strategy": "thompson",
                    "metadata": {"arms": []},
                    "decision_id": did,
                    "propensity": 0.5,
                },
            )
        body = json.loads(request.content)
        self.rewards.append(body)
        if len(self.rewards) >= self.wanted:
            self.stop.set()
        return httpx.Response(
            200,
            json={
                "status": "ok",
                "experiment_id": body["experiment_id"],
                "arm_id": body["arm_id"],
                "strategy": "thompson",
                "event_id": body["event_id"],
            },
        )


def _created(request: httpx.Request) -> dict[str, Any]:
    body = json.loads(request.content)
    return {**body, "version": 1}


async def test_demo_joins_rewards_to_decisions_and_waits_out_a_down_api() -> None:
    stop = asyncio.Event()
    fake = FakeDecider(down=4, stop=stop, rewards_wanted=20)

    async def no_sleep(_: float) -> None:
        await asyncio.sleep(0)

    settings = DemoSettings(
        mab_demo_rps=2000, mab_demo_concurrency=2, mab_demo_seed=3, mab_demo_max_backoff_s=0.01
    )
    client = AsyncMabClient(
        "http://mab",
        transport=httpx.MockTransport(fake),
        retry=RetryPolicy(max_attempts=2, backoff_base_s=0.0, backoff_max_s=0.0),
        sleep=no_sleep,
    )
    demo = DemoTraffic(settings, client=client)
    async with client:
        await asyncio.wait_for(demo.run(stop), timeout=20)
    assert demo.stats.errors >= 1  # the unavailable API was noticed and waited out
    assert len(fake.rewards) >= 20
    assert demo.stats.rewards >= 20
    for body in fake.rewards:
        assert fake.served[body["decision_id"]] == body["arm_id"]
        assert body["reward"] in (0.0, 1.0)
    assert len({b["event_id"] for b in fake.rewards}) == len(fake.rewards)

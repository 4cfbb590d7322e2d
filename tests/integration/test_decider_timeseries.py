"""``GET /experiments/{id}/timeseries`` against real Redis + Kafka (in-process ASGI app).

Buckets are written by the projector's own handler from hand-made records, so this
checks the writer/reader contract end to end (docs/timeseries-api.md).
"""

from __future__ import annotations

import time

import httpx
import pytest
from redis.asyncio import Redis

from schemas.codec import encode
from schemas.events import AnyEvent, ChangePointDetected, DecisionMade, RewardObserved
from schemas.topics import TopicNames
from services.projector.settings import ProjectorSettings
from stream_runtime.kafka_consumer import KafkaRecord as Rec
from stream_runtime.redis_store import RedisStateStore
from tests.fixtures.engines import projection_engine
from tests.fixtures.events import decision_of

pytestmark = pytest.mark.integration

ARMS = ["blue-button", "green-button", "red-button"]
EXP = "cta-button-test"


async def project(redis_url: str, ns: str, events: list[tuple[str, AnyEvent]]) -> None:
    s = ProjectorSettings(redis_url=redis_url, mab_topic_prefix=ns, mab_redis_prefix=ns)
    redis = Redis.from_url(redis_url)
    try:
        handler = projection_engine(RedisStateStore(redis), ns, s.retention)
        recs = [Rec(t, 0, i, 0, encode(e)) for i, (t, e) in enumerate(events)]
        await handler.handle(recs)
    finally:
        await redis.aclose()


def decision(arm: str, ts: float) -> DecisionMade:
    return decision_of(EXP, arm, ARMS.index(arm), ts)


def hour_traffic(
    names: TopicNames, start: int, per_arm: dict[str, tuple[int, int]]
) -> list[tuple[str, AnyEvent]]:
    """``per_arm``: arm -> (decisions, conversions); every decision gets a 0/1 reward."""
    out: list[tuple[str, AnyEvent]] = []
    for arm, (n, conv) in per_arm.items():
        for i in range(n):
            d = decision(arm, start + 60 + i)
            r = RewardObserved(
                experiment_id=EXP,
                arm_id=arm,
                reward=1.0 if i < conv else 0.0,
                decision_id=d.decision_id,
                ts=start + 61 + i,
            )
            out += [(names.decisions, d), (names.rewards, r)]
    return out


async def test_timeseries_contract(client: httpx.AsyncClient, redis_url: str, ns: str) -> None:
    names = TopicNames.with_prefix(ns)
    assert (await client.get(f"/experiments/{EXP}/timeseries")).status_code == 404
    resp = await client.post("/experiments", json={"experiment_id": EXP, "arm_ids": ARMS})
    assert resp.status_code == 201

    empty = (await client.get(f"/experiments/{EXP}/timeseries")).json()
    assert empty["points"] == []
    assert empty["change_points"] == []
    assert empty["winner_changes"] == []
    assert empty["arm_ids"] == ARMS
    assert empty["to"] - empty["from"] == 49 * 3600  # last 48 h, aligned outwards

    h = int(time.time() // 3600) * 3600 - 3 * 3600
    events = [
        *hour_traffic(names, h, {"blue-button": (40, 8), "green-button": (25, 2)}),
        *hour_traffic(names, h + 3600, {"blue-button": (30, 3), "red-button": (30, 9)}),
        (
            names.experiments,
            ChangePointDetected(
                experiment_id=EXP, arm_id="red-button", detector="cusum", ts=h + 3700.5
            ),
        ),
    ]
    await project(redis_url, ns, events)

    body = (
        await client.get(
            f"/experiments/{EXP}/timeseries",
            params={"bucket": "hour", "from": str(h), "to": str(h + 2 * 3600)},
        )
    ).json()
    assert body["experiment_id"] == EXP
    assert body["bucket"] == "hour"
    assert (body["from"], body["to"]) == (h, h + 7200)
    rows = [
        (p["bucket_start"], p["arm_id"], p["decisions"], p["rewards"], p["reward_sum"])
        for p in body["points"]
    ]
    assert rows == [
        (h, "blue-button", 40, 40, 8.0),
        (h, "green-button", 25, 25, 2.0),
        (h + 3600, "blue-button", 30, 30, 3.0),
        (h + 3600, "red-button", 30, 30, 9.0),
    ]
    first = body["points"][0]
    assert first["conversion_rate"] == pytest.approx(0.2)
    assert first["traffic_share"] == pytest.approx(40 / 65)
    assert body["change_points"] == [
        {"ts": h + 3700.5, "arm_id": "red-button", "detector": "cusum"}
    ]
    assert body["winner_changes"] == [
        {"bucket_start": h + 3600, "from_arm": "blue-button", "to_arm": "red-button"}
    ]

    # ISO 8601 gives the same answer; the minute view has the same totals in finer buckets.
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h))
    same = await client.get(
        f"/experiments/{EXP}/timeseries", params={"from": iso, "to": str(h + 7200)}
    )
    assert same.json() == body
    minute = (
        await client.get(
            f"/experiments/{EXP}/timeseries",
            params={"bucket": "minute", "from": str(h), "to": str(h + 7200)},
        )
    ).json()
    assert minute["bucket"] == "minute"
    assert all(p["bucket_start"] % 60 == 0 for p in minute["points"])
    assert sum(p["decisions"] for p in minute["points"]) == 125
    assert sum(p["reward_sum"] for p in minute["points"]) == pytest.approx(22.0)


@pytest.mark.parametrize(
    "params",
    [
        {"bucket": "day"},
        {"from": "yesterday"},
        {"from": "2000", "to": "1000"},
        {"from": "0", "to": str(32 * 86400)},
        {"bucket": "minute", "from": "0", "to": str(25 * 3600)},
    ],
)
async def test_timeseries_rejects_bad_queries(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    resp = await client.post("/experiments", json={"experiment_id": EXP, "arm_ids": ARMS})
    assert resp.status_code in (201, 409)
    assert (await client.get(f"/experiments/{EXP}/timeseries", params=params)).status_code == 422


async def test_timeseries_is_documented(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/experiments/{experiment_id}/timeseries"]["get"]
    assert op["summary"]
    assert {p["name"] for p in op["parameters"]} >= {"experiment_id", "bucket", "from", "to"}

"""The stream processors' Prometheus metrics and reject logs, against a real Kafka + Redis."""

from __future__ import annotations

import logging

import httpx
import pytest
from redis.asyncio import Redis

from bandit_core.decision_ids import make_decision_id
from schemas.codec import encode
from schemas.events import RewardObserved
from schemas.topics import TopicNames
from services.reward_consumer.consumer import RewardConsumer
from stream_runtime.metrics import MetricsServer
from tests.fixtures.in_process import consumer_settings, wait_for
from tests.fixtures.streams import put_config
from tests.integration.test_reward_consumer import ARMS, produce

pytestmark = pytest.mark.integration


async def test_consumer_metrics_match_its_stats(
    kafka_bootstrap: str,
    redis_url: str,
    ns: str,
    topics: dict[str, int],
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Scenario: 40 valid rewards, 3 for an unknown arm (with decision ids) and 2
    unreadable records are folded. We expect the exported counters to equal the
    consumer's own stats (records by outcome, rejects by reason, batches and their
    sizes), lag 0 per partition after catch-up, the exporter to serve them over HTTP,
    and each reject's log line to carry its decision id."""
    names = TopicNames.with_prefix(ns)
    exp = "shop-m"
    await put_config(redis, ns, exp, ARMS)
    good = [
        encode(RewardObserved(experiment_id=exp, arm_id="a", reward=float(i % 2)))
        for i in range(40)
    ]
    bad_ids = [make_decision_id(0) for _ in range(3)]
    bad = [
        encode(RewardObserved(experiment_id=exp, arm_id="zz", reward=1.0, decision_id=d))
        for d in bad_ids
    ]
    junk = [b"not json", b'{"type": "reward_observed"}']
    records = [(names.rewards, exp, v) for v in [*good, *bad, *junk]]
    await produce(kafka_bootstrap, records)

    consumer = RewardConsumer(consumer_settings(kafka_bootstrap, redis_url, ns, ns + "gm"))
    caplog.set_level(logging.WARNING, logger="services.reward_consumer")
    await consumer.start()
    try:
        await wait_for(lambda: consumer.stats.records >= len(records), 60, "catch-up")
        reg = consumer.metrics.registry
        await wait_for(
            lambda: any(
                s.name == "mab_stream_consumer_lag"
                for m in reg.collect()
                for s in m.samples
                if s.labels.get("topic") == names.rewards
            ),
            10,
            "lag gauges",
        )
        server = MetricsServer(reg, 0)
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                text = (await http.get(f"http://127.0.0.1:{server.port}/metrics")).text
        finally:
            server.close()
    finally:
        await consumer.stop()

    def value(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    stats = consumer.stats
    assert stats.applied == 40
    assert value("mab_stream_records_total", outcome="applied") == 40
    assert value("mab_stream_records_total", outcome="records") == len(records)
    assert sum(stats.rejected.values()) == 5
    for reason, n in stats.rejected.items():
        assert value("mab_stream_rejected_total", reason=reason) == n
    assert value("mab_stream_batches_total") == consumer.batches
    assert value("mab_stream_batch_records_sum") == len(records)
    assert value("mab_stream_fold_duration_seconds_count") == consumer.batches
    assert value("mab_stream_failed_batches_total") == 0
    lags = [
        s.value
        for m in reg.collect()
        for s in m.samples
        if s.name == "mab_stream_consumer_lag" and s.labels["topic"] == names.rewards
    ]
    assert lags
    assert all(lag == 0 for lag in lags)
    assert "mab_stream_batches_total" in text
    logged = [r for r in caplog.records if getattr(r, "decision_id", None) in bad_ids]
    assert len(logged) == 3
    assert all(r.__dict__["experiment_id"] == exp for r in logged)

"""Replay throughput: N events (half decisions, half joined rewards) replayed into snapshots
and hour/minute buckets by ``mab replay``'s engine, with the time split by stage.

``python -m bench.replay_rate --records 1000000`` uses a throwaway Redis and Kafka of its
own unless ``--bootstrap``/``--redis-url`` name running ones (then it works under a fresh
topic and key prefix and deletes its topics and keys afterwards). ``bench.run`` calls
:func:`measure` too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from bandit_core.decision_ids import make_decision_id
from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack
from deploy.stack.topics import create_topics, product_topic_specs
from mab_cli.replay_redis import delete_namespace
from mab_cli.replay_runs import ReplayTarget, run_dry
from schemas.topics import TopicNames, partition_key
from services.projector import Retention
from stream_runtime.acked_producer import AckedProducer, OutRecord
from stream_runtime.kafka_connection import KafkaConnection, KafkaTarget
from stream_runtime.kafka_metadata import admin_client

EXPERIMENTS = 48  # many experiments: partitions (and so workers) get even shares
ARMS = ("a", "b", "c")


async def prefill(bootstrap: KafkaTarget, topics: TopicNames, n: int, seed: int = 7) -> None:
    """Create the experiments and produce ``n`` decision/reward records (JSON built by
    hand, like a bulk producer would, so the prefill is not the slow part)."""
    rng = random.Random(seed)
    now = time.time()
    producer = AckedProducer(bootstrap, "bench-prefill")
    await producer.start()
    try:
        pending: list[OutRecord] = []
        for e in range(EXPERIMENTS):
            exp = f"bench-{e}"
            config = {
                "experiment_id": exp,
                "arm_ids": list(ARMS),
                "strategy": "thompson",
                "strategy_params": {},
                "version": 1,
                "created_ts": now - 7200,
                "updated_ts": now - 7200,
            }
            created = {
                "type": "experiment_created",
                "event_id": uuid.uuid4().hex,
                "ts": now - 7200,
                "experiment_id": exp,
                "config": config,
            }
            pending.append(OutRecord(topics.experiments, orjson.dumps(created), partition_key(exp)))
        for i in range(n // 2):
            exp = f"bench-{i % EXPERIMENTS}"
            idx = rng.randrange(3)
            did = make_decision_id(idx)
            ts = now - 6 * 3600 + i * (6 * 3600 / (n // 2))
            decision = {
                "type": "decision_made",
                "event_id": uuid.uuid4().hex,
                "ts": ts,
                "experiment_id": exp,
                "decision_id": did,
                "arm_id": ARMS[idx],
                "strategy": "thompson",
                "strategy_params": {},
                "propensity": 0.4,
                "config_version": 1,
                "snapshot_version": i,
            }
            reward = {
                "type": "reward_observed",
                "event_id": uuid.uuid4().hex,
                "ts": ts + 5.0,
                "experiment_id": exp,
                "arm_id": ARMS[idx],
                "reward": 1.0 if rng.random() < 0.1 * (idx + 1) else 0.0,
                "decision_id": did,
            }
            key = partition_key(exp)
            pending.append(OutRecord(topics.decisions, orjson.dumps(decision), key))
            pending.append(OutRecord(topics.rewards, orjson.dumps(reward), key))
            if len(pending) >= 20_000:
                await producer.send(pending)
                pending = []
        await producer.send(pending)
    finally:
        await producer.stop()


def _drop_topics(bootstrap: KafkaTarget, topics: TopicNames) -> None:
    admin = admin_client(bootstrap)
    deleted = admin.delete_topics([topics.experiments, topics.decisions, topics.rewards])
    for future in deleted.values():
        future.result(30.0)


def measure(bootstrap: KafkaTarget, redis_url: str, records: int, workers: int) -> dict[str, Any]:
    """Prefill fresh topics, replay them ``workers``-wide, return the figures."""
    prefix = f"bench{uuid.uuid4().hex[:6]}-"
    topics = TopicNames.with_prefix(prefix)
    create_topics(bootstrap, product_topic_specs(prefix))
    try:
        t0 = time.monotonic()
        asyncio.run(prefill(bootstrap, topics, records))
        prefill_s = time.monotonic() - t0
        # The replay measured is of a log at rest (as when Redis is rebuilt), not of one
        # whose last ~300 MB the kernel is still writing back to disk meanwhile.
        os.sync()
        time.sleep(2.0)
        target = ReplayTarget(
            bootstrap=bootstrap,
            redis_url=redis_url,
            topic_prefix=prefix,
            redis_prefix=prefix,
            retention=Retention(hour_s=90 * 86400, minute_s=2 * 86400),
            workers=workers,
        )
        outcome = asyncio.run(run_dry(target, lambda _: None, None))
        data = outcome.as_dict()
        data["workers"] = workers
        data["prefill_s"] = round(prefill_s, 1)
        return data
    finally:
        _drop_topics(bootstrap, topics)

        async def clean() -> None:
            redis = Redis.from_url(redis_url)
            await delete_namespace(redis, prefix)
            await redis.aclose()

        asyncio.run(clean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bootstrap", help="a running broker (default: a throwaway one)")
    parser.add_argument("--redis-url", help="a running Redis (default: a throwaway one)")
    args = parser.parse_args()
    stack = LocalStack(StackConfig.throwaway(), services=[])
    try:
        bootstrap: KafkaTarget
        if args.bootstrap is not None:
            # TLS and SASL of a running broker: the KAFKA_* variables.
            bootstrap = KafkaConnection(kafka_bootstrap_servers=args.bootstrap)
        else:
            stack.start_kafka()
            bootstrap = stack.bootstrap
        redis_url = args.redis_url
        if redis_url is None:
            stack.start_redis()
            redis_url = stack.redis_url
        print(json.dumps(measure(bootstrap, redis_url, args.records, args.workers), indent=2))
    finally:
        stack.down()


if __name__ == "__main__":
    main()

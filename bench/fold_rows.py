"""The consumers' fold rows of the benchmark: a pre-filled rewards topic, then a fresh
reward consumer (and projector) process timed until it has caught up.

Kept apart from :mod:`bench.run` because the decider rows use it too (the 1,000-arm
experiment is folded before it is measured) and ``--only fold`` runs it alone.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.harness import RESULTS, ROOT, Proc, cpu_s, header, rss_mb, stream_env
from deploy.stack.local import throwaway_stack
from deploy.stack.topics import create_topics
from schemas.events import RewardObserved
from schemas.redis_keys import FIELD_REWARDS, RedisKeys
from schemas.topics import TopicNames, partition_key, topic_specs
from stream_runtime.acked_producer import AckedProducer, OutRecord
from stream_runtime.kafka_connection import KafkaConnection, KafkaTarget

#: Records produced per acknowledged send while pre-filling a topic.
PREFILL_CHUNK = 20_000


def prefill_record(experiment: str, arms: Sequence[str], i: int) -> bytes:
    """The ``i``-th pre-filled reward: the API's full JSON, arms in turn, one in seven a
    conversion (``bench.decode_cost`` decodes the same records)."""
    event = RewardObserved(
        experiment_id=experiment,
        arm_id=arms[i % len(arms)],
        reward=float(i % 7 == 0),
        source="bench",
    )
    return orjson.dumps(event.model_dump())


async def _prefill(
    bootstrap: KafkaTarget, topic: str, experiment: str, arms: list[str], n: int
) -> None:
    producer = AckedProducer(bootstrap, "bench-prefill")
    await producer.start()
    try:
        key = partition_key(experiment)
        chunk: list[OutRecord] = []
        for i in range(n):
            chunk.append(OutRecord(topic, prefill_record(experiment, arms, i), key))
            if len(chunk) >= PREFILL_CHUNK:
                await producer.send(chunk)
                chunk = []
        await producer.send(chunk)
    finally:
        await producer.stop()


def fold_rate(
    name: str,
    module: str,
    env: dict[str, str],
    logdir: Path,
    folded: Callable[[], int],
    n: int,
) -> dict[str, Any]:
    """Start a consumer process on a pre-filled topic and time it until ``folded()``
    (records in Redis so far) reaches ``n``.

    ``records_per_s`` counts from the process start (imports, group join included);
    ``folding_records_per_s`` from the first poll of progress that shows folded records
    to the end, i.e. the rate once the process is consuming, and ``cpu_us_per_record``
    the process's CPU time per record over the same stretch.
    """
    proc = Proc(name, [sys.executable, "-m", module], env, logdir)
    pid = proc.popen.pid
    t0 = time.monotonic()
    first: tuple[float, int, float] | None = None
    try:
        rss_rest = rss_mb(pid)
        while (done := folded()) < n:
            if done and first is None:
                first = (time.monotonic(), done, cpu_s(pid))
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} exited: {proc.log.read_text()[-2000:]}")
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"{name} did not catch up in 600 s")
            time.sleep(0.02)
        end, end_cpu = time.monotonic(), cpu_s(pid)
        seconds = end - t0
        if first is None or end <= first[0]:
            first = (t0, 0, 0.0)
        return {
            "records": n,
            "seconds": round(seconds, 2),
            "records_per_s": round(n / seconds),
            "folding_records_per_s": round((n - first[1]) / (end - first[0])),
            "cpu_us_per_record": round((end_cpu - first[2]) / (n - first[1]) * 1e6, 1),
            "rss_mb_start": rss_rest,
            "rss_mb_loaded": rss_mb(proc.popen.pid),
        }
    finally:
        proc.stop()


def snapshot_rewards(raw: bytes | None) -> int:
    """Rewards the reward consumer has folded, from an experiment's stored snapshot (the
    pulls of every arm; ``None`` before the first fold)."""
    arms: dict[str, list[float]] = orjson.loads(raw)["arms"] if raw else {}
    return int(sum(v[0] for v in arms.values()))


def projected_rewards(hour_buckets: Iterable[Mapping[bytes, bytes]]) -> int:
    """Rewards the projector has counted, from the hashes of one experiment's *hour*
    buckets (fields ``<arm>|d``, ``<arm>|r``, ``<arm>|s``). Pass only one bucket family:
    each reward is in one hour and one minute bucket."""
    return sum(
        int(value)
        for fields in hour_buckets
        for field, value in fields.items()
        if field.endswith(b"|" + FIELD_REWARDS.encode())
    )


def fold_rows(
    bootstrap: KafkaTarget, redis_url: str, fold_records: int, env: dict[str, str], logdir: Path
) -> dict[str, Any]:
    """The consumers' fold rates: pre-fill the rewards topic of a new namespace, then
    time a fresh reward consumer (and projector) to catch up. ``env`` names the
    namespace (``MAB_TOPIC_PREFIX`` = ``MAB_REDIS_PREFIX``, topics created)."""
    import redis

    prefix = env["MAB_TOPIC_PREFIX"]
    topics = TopicNames.with_prefix(prefix)
    results: dict[str, Any] = {}
    exp = "bench-fold"
    keys = RedisKeys(prefix).experiment(exp)
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    client.set(
        keys.config,
        orjson.dumps(
            {
                "experiment_id": exp,
                "arm_ids": ["a", "b", "c"],
                "strategy": "thompson",
                "strategy_params": {},
                "version": 1,
                "created_ts": now,
                "updated_ts": now,
            }
        ),
    )
    asyncio.run(_prefill(bootstrap, topics.rewards, exp, ["a", "b", "c"], fold_records))

    def time_fold(
        label: str, name: str, group_env: str, group: str, folded: Callable[[], int]
    ) -> None:
        """Time the consumer ``name`` (package ``services.<name>``) catching up, in a
        consumer group of its own in the namespace."""
        module = f"services.{name.replace('-', '_')}"
        consumer_env = {**env, group_env: f"{prefix}{group}"}
        results[label] = fold_rate(name, module, consumer_env, logdir, folded, fold_records)

    def folded() -> int:
        return snapshot_rewards(client.get(keys.snapshot))  # type: ignore[arg-type]

    time_fold("reward consumer fold", "reward-consumer", "MAB_CONSUMER_GROUP_ID", "bench", folded)
    if (ROOT / "services" / "projector" / "__main__.py").exists():

        def projected() -> int:
            # The hour buckets only: the projector writes every reward into an hour *and*
            # a minute bucket, so summing both families counts each reward twice.
            hours = client.scan_iter(match=keys.bucket_pattern("hour"))
            return projected_rewards(client.hgetall(key) for key in hours)  # type: ignore[misc]

        time_fold(
            "projector fold", "projector", "MAB_PROJECTOR_GROUP_ID", "bench-projector", projected
        )
    return results


def run_folds(fold_records: int, bootstrap: str | None, redis_url: str | None) -> dict[str, Any]:
    """Only the consumer fold rows (``--only fold``), on a running Kafka + Redis when
    both are given (a fresh namespace on it, its keys deleted afterwards), else on a
    throwaway stack."""
    results = header("consumer fold rows only")
    prefix = f"bench{uuid.uuid4().hex[:6]}-"
    if bootstrap is None or redis_url is None:
        with throwaway_stack() as stack:
            stack.start_redis()
            stack.start_kafka()
            create_topics(stack.bootstrap, topic_specs(prefix))
            logdir = Path(stack.config.run_dir) / "bench-logs"
            logdir.mkdir(parents=True, exist_ok=True)
            env = stream_env(stack.bootstrap, stack.redis_url, prefix)
            results.update(fold_rows(stack.bootstrap, stack.redis_url, fold_records, env, logdir))
        return results
    import redis

    # TLS and SASL of a running broker come from the KAFKA_* variables (the fold
    # processes inherit them).
    kafka = KafkaConnection(kafka_bootstrap_servers=bootstrap)
    create_topics(kafka, topic_specs(prefix))
    logdir = RESULTS / "logs" / prefix.rstrip("-")
    logdir.mkdir(parents=True, exist_ok=True)
    try:
        env = stream_env(bootstrap, redis_url, prefix)
        results.update(fold_rows(kafka, redis_url, fold_records, env, logdir))
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
    return results


def fold_into(experiment: str, arms: list[str], env: dict[str, str], logdir: Path, n: int) -> None:
    """Pre-fill ``n`` rewards for ``experiment`` and fold them with a reward consumer
    process, stopped again before anything is measured (like every row's setup)."""
    import redis

    prefix = env["MAB_TOPIC_PREFIX"]
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    asyncio.run(_prefill(bootstrap, TopicNames.with_prefix(prefix).rewards, experiment, arms, n))
    client = redis.Redis.from_url(env["REDIS_URL"])
    snapshot = RedisKeys(prefix).experiment(experiment).snapshot

    def folded() -> int:
        return snapshot_rewards(client.get(snapshot))  # type: ignore[arg-type]

    fold_rate(
        "catalogue-consumer",
        "services.reward_consumer",
        {**env, "MAB_CONSUMER_GROUP_ID": f"{prefix}catalogue"},
        logdir,
        folded,
        n,
    )

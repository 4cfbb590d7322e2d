"""Produce rewards in bulk straight into Kafka, following the topic contract.

    python examples/bulk_reward_producer.py --file rewards.jsonl
    python examples/bulk_reward_producer.py --demo cta-button-test --arms blue,green --count 1000

Each record is one JSON object of the reward contract
(``schemas/contract/v1/reward-record.schema.json``): ``experiment_id``, ``arm_id`` and
``reward`` in [0, 1], optionally ``event_id``, ``ts``, ``decision_id``, ``source`` and
``user_context`` (a JSON object about the visitor, as in the original API: at most 32
keys and 2 KiB as JSON; beyond that the record is dead-lettered as ``bad_user_context``).
Ids are any printable text of 1-120 characters (``"Free Shipping"``, ``"10% off"``).
What matters for a correct producer, and what this example does:

* key every record by its experiment id, as trimmed UTF-8 text (the API trims ids, and
  its events use that key): one experiment's rewards stay in order and in one partition;
* ``acks="all"`` and ``enable_idempotence=True``: a send that returned is durable, and
  the client's own retries never write a record twice;
* give every reward an ``event_id`` that is stable across *your* retries (an order id,
  or a name derived from your input): if you re-run a failed export, the reward consumer
  applies each event id once (within the 7-day dedupe horizon), whichever path it
  came by (this topic or ``POST /reward(s)``).

Records that break the contract are not lost: they land in the dead-letter topic with
the reason (``mab dlq count`` / ``mab dlq list``).

Connecting to a managed Kafka (TLS, SASL): the same ``KAFKA_*`` variables as the
services (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``,
``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_CA_LOCATION``, ...; docs/operations.md), read by the
project's ``KafkaConnection`` and handed to aiokafka as keyword arguments. Outside this
project, pass the same values to ``AIOKafkaProducer`` (``security_protocol``,
``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_context``).

aiokafka is not a dependency of the server: ``pip install "aiokafka>=0.14,<0.15"`` (in a
checkout of this project, the ``dev`` group has it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from stream_runtime.kafka_connection import KafkaConnection


def demo_rewards(
    experiment: str, arms: list[str], count: int, run: str
) -> Iterator[dict[str, Any]]:
    """``count`` made-up conversions; event ids are stable for a given ``run`` name."""
    rng = random.Random(run)
    for i in range(count):
        yield {
            "experiment_id": experiment,
            "arm_id": rng.choice(arms),
            "reward": 1.0 if rng.random() < 0.1 else 0.0,
            "event_id": f"{run}-{i}",
            "ts": time.time(),
            "source": "bulk-example",
            "user_context": {"segment": rng.choice(["new", "returning"])},
        }


def file_rewards(path: Path) -> Iterator[dict[str, Any]]:
    """One reward object per non-empty line of a JSON Lines file."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


async def produce(kafka: KafkaConnection, topic: str, rewards: Iterator[dict[str, Any]]) -> int:
    """Send every reward and return once the broker acknowledged all of them."""
    producer = AIOKafkaProducer(
        **kafka.aiokafka_kwargs(),  # servers, and TLS/SASL when the variables set them
        acks="all",
        enable_idempotence=True,
        linger_ms=20,  # batch: bulk throughput is batch size per round trip
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        pending = []
        for reward in rewards:
            value = json.dumps(reward, allow_nan=False).encode()
            key = str(reward["experiment_id"]).strip().encode()
            pending.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*pending)
        return len(pending)
    finally:
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument("--topic", default="mab.rewards", help="the rewards topic")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="JSON Lines file of rewards")
    source.add_argument("--demo", metavar="EXPERIMENT", help="made-up rewards for EXPERIMENT")
    parser.add_argument("--arms", default="a,b", help="demo: comma-separated arm ids")
    parser.add_argument("--count", type=int, default=1000, help="demo: how many rewards")
    parser.add_argument("--run", default="demo-run-1", help="demo: event id prefix")
    args = parser.parse_args(argv)
    rewards = (
        file_rewards(args.file)
        if args.file is not None
        else demo_rewards(args.demo, args.arms.split(","), args.count, args.run)
    )
    kafka = KafkaConnection().with_servers(args.bootstrap)
    sent = asyncio.run(produce(kafka, args.topic, rewards))
    print(f"{sent} rewards acknowledged by {kafka.kafka_bootstrap_servers} on {args.topic}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

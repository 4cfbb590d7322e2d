"""Creating the product's Kafka topics, on the local broker or on a managed cluster.

The names, partition counts and settings come from :mod:`schemas.topics` (their one
source); this module only provisions them, idempotently, and waits until the broker's
metadata shows them, so the first producer after ``mab up`` or ``mab topics create``
never races the controller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from deploy.stack.errors import StackError

if TYPE_CHECKING:
    from stream_runtime.kafka_connection import KafkaTarget


class TopicSpecLike(Protocol):
    """What :func:`schemas.topics.topic_specs` returns (structural, so tests can pass their own)."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> int: ...
    @property
    def config(self) -> dict[str, str]: ...


def product_topic_specs(prefix: str = "") -> list[TopicSpecLike]:
    """The product's topics from ``schemas.topics`` (the single source of names and settings)."""
    try:
        from schemas.topics import topic_specs
    except ModuleNotFoundError as exc:
        raise StackError(f"schemas.topics is not available ({exc})") from exc
    return list(topic_specs(prefix))


def create_topics(
    kafka: KafkaTarget, specs: Sequence[TopicSpecLike], timeout: float = 30.0
) -> dict[str, int]:
    """Create missing topics (replication 1) and return ``{name: partition count}``.

    ``kafka`` is bare servers (a PLAINTEXT broker, like the local stack's) or a whole
    :class:`~stream_runtime.kafka_connection.KafkaConnection` (TLS, SASL), so ``mab topics
    create`` provisions a managed cluster too. A broker that refuses the connection
    settings is a :class:`StackError` naming the variable to fix.

    Idempotent: existing topics are left alone (never re-partitioned: that would move
    experiments between partitions and break per-experiment order), and "already exists" from
    a concurrent creator is not an error. Waits until the metadata shows every topic with its
    partitions, so a producer right after this call does not race the controller.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from stream_runtime.kafka_connection import (
        KafkaConnectionError,
        new_client,
        wait_until_reachable,
    )

    try:
        admin, errors = new_client(AdminClient, kafka)
        existing = wait_until_reachable(admin, errors, timeout).topics
    except KafkaConnectionError as exc:
        raise StackError(str(exc)) from None
    missing = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=dict(s.config))
        for s in specs
        if s.name not in existing
    ]
    if missing:
        failures = []
        for name, future in admin.create_topics(missing, request_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                err = exc.args[0]
                raced = (
                    isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                )
                if not raced:
                    failures.append(f"{name}: {err}")
        if failures:
            raise StackError("topic creation failed: " + "; ".join(failures))
    names = [s.name for s in specs]
    deadline = time.monotonic() + timeout
    while True:
        listed = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        counts = {
            n: len(listed[n].partitions)
            for n in names
            if n in listed and listed[n].error is None and listed[n].partitions
        }
        if len(counts) == len(names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    missing_names = [n for n in names if n not in counts]
    if missing_names:
        raise StackError(f"topics not visible in metadata after {timeout}s: {missing_names}")
    return counts

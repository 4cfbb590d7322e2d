"""The single-node KRaft broker's configuration and identity (deploy/stack/kafka_broker.py).
Starting a real one: tests/integration/test_stack.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.stack.config import KafkaExtras
from deploy.stack.kafka_broker import kafka_server_properties, new_cluster_id

pytestmark = pytest.mark.unit


def test_server_properties_have_the_single_node_essentials(tmp_path: Path) -> None:
    text = kafka_server_properties(tmp_path, 19092, 19093)
    for line in (
        "process.roles=broker,controller",
        "node.id=1",
        "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
        "controller.quorum.bootstrap.servers=127.0.0.1:19093",
        "offsets.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        f"log.dirs={tmp_path / 'logs'}",
    ):
        assert line in text.splitlines()


def test_extra_properties_come_last_so_they_win(tmp_path: Path) -> None:
    extras = KafkaExtras(properties={"num.partitions": "1"})
    lines = kafka_server_properties(tmp_path, 19092, 19093, extras).splitlines()
    assert lines.index("num.partitions=4") < lines.index("num.partitions=1")


def test_cluster_ids_are_kafka_style_and_never_look_like_an_option() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22  # 16 bytes, URL-safe base64 without padding
        assert not cid.startswith("-")
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

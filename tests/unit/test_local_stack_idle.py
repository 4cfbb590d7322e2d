"""`mab up --consumers N` / `--projectors N` warn when N exceeds the partitions of the
topics the group reads: Kafka gives each partition to one member, the rest sit idle."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.local_stack import SERVICES, LocalStack, Ports, StackConfig, TopicSpecLike
from mab_cli.main import app
from schemas.topics import DEFAULT_PARTITIONS, TopicNames, topic_specs
from services.projector.consumer import Projector
from services.projector.settings import ProjectorSettings
from services.reward_consumer.consumer import RewardConsumer
from services.reward_consumer.settings import ConsumerSettings

pytestmark = pytest.mark.unit

PREFIX = "p-"
NAMES = TopicNames.with_prefix(PREFIX)
#: What the broker reports for freshly created product topics.
CREATED = {s.name: s.partitions for s in topic_specs(PREFIX)}


def _stack(tmp_path: Path, **scale: int) -> LocalStack:
    config = StackConfig(tmp_path, Ports(), persistent=False, topic_prefix=PREFIX)
    return LocalStack(config, services=SERVICES, scale=scale)


def test_the_registry_names_the_topics_each_group_subscribes_to() -> None:
    """The warning is only as true as ``consumes``: it must list what the processors
    subscribe to."""
    specs = {s.name: s for s in SERVICES}
    consumer = RewardConsumer(ConsumerSettings(mab_topic_prefix=PREFIX))
    projector = Projector(ProjectorSettings(mab_topic_prefix=PREFIX))
    for name, processor in (("reward-consumer", consumer), ("projector", projector)):
        declared = [getattr(NAMES, f) for f in specs[name].consumes]
        assert sorted(declared) == sorted(processor.subscribed), name


def test_no_warning_up_to_the_partition_count(tmp_path: Path) -> None:
    n = DEFAULT_PARTITIONS
    assert _stack(tmp_path, **{"reward-consumer": n, "projector": n}).idle_members(CREATED) == []


def test_members_beyond_the_partitions_are_named_idle(tmp_path: Path) -> None:
    stack = _stack(tmp_path, **{"reward-consumer": 8, "projector": 7})
    consumer, projector = stack.idle_members(CREATED)
    assert consumer.startswith(f"8 reward-consumer instances but their topics have {6} partitions")
    assert f"{NAMES.rewards} 6, {NAMES.decisions} 6" in consumer
    assert "2 will sit idle" in consumer
    assert projector.startswith("7 projector instances")
    assert "1 will sit idle" in projector


def test_the_broker_s_counts_of_existing_topics_decide(tmp_path: Path) -> None:
    """Topics created earlier with more (or fewer) partitions: what the broker reports
    counts, not the default; the largest topic a group reads bounds its busy members."""
    wider = {**CREATED, NAMES.rewards: 12}
    assert _stack(tmp_path, **{"reward-consumer": 8}).idle_members(wider) == []
    narrow = {**CREATED, NAMES.rewards: 2, NAMES.decisions: 2, NAMES.experiments: 2}
    (warning,) = _stack(tmp_path, **{"reward-consumer": 2, "projector": 3}).idle_members(narrow)
    assert warning.startswith("3 projector instances")
    assert "1 will sit idle" in warning


def test_mab_up_prints_the_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The whole path: `mab up --consumers 9 --no-services` with Redis, Kafka and the
    topic creation faked (the broker reports 6 partitions per product topic)."""

    def fake_topics(
        self: LocalStack, specs: Sequence[TopicSpecLike] | None = None
    ) -> dict[str, int]:
        return {s.name: s.partitions for s in topic_specs(self.config.topic_prefix)}

    monkeypatch.setattr(LocalStack, "start_redis", lambda self, timeout=20.0: 1)
    monkeypatch.setattr(LocalStack, "start_kafka", lambda self, timeout=90.0: 2)
    monkeypatch.setattr(LocalStack, "create_topics", fake_topics)
    monkeypatch.setattr(LocalStack, "status", lambda self: [])
    monkeypatch.setattr(
        StackConfig,
        "product",
        classmethod(lambda cls, env=None: StackConfig(tmp_path, Ports.free(), persistent=True)),
    )
    out = CliRunner().invoke(app, ["up", "--consumers", "9", "--no-services"]).output
    assert "warning: 9 reward-consumer instances" in out
    assert "3 will sit idle" in out
    assert "projector instances" not in out
    quiet = CliRunner().invoke(app, ["up", "--consumers", "6", "--no-services"]).output
    assert "warning:" not in quiet

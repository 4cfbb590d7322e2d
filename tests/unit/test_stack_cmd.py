"""``mab up`` over the stack (mab_cli/stack_cmd.py): exit codes, what counts as failed,
and the idle-consumer warning, with Redis, Kafka and the topics faked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack
from deploy.stack.ports import Ports
from deploy.stack.status import ComponentStatus
from deploy.stack.topics import TopicSpecLike
from mab_cli.main import app
from schemas.topics import topic_specs

pytestmark = pytest.mark.unit


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


def test_cli_up_without_services_succeeds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The reported bug: `mab up --no-services` printed "error: not healthy: decider, ..."
    and exited 1. Redis and Kafka are faked healthy here; services were never started."""
    started: list[bool] = []

    def fake_up(
        self: LocalStack, *, with_services: bool = True, **_: object
    ) -> list[ComponentStatus]:
        started.append(with_services)
        infra = [
            ComponentStatus("redis", 1, 6379, True, True),
            ComponentStatus("kafka", 2, 9092, True, True),
        ]
        return infra + [r for r in self.status() if r.name not in ("redis", "kafka")]

    monkeypatch.setattr(LocalStack, "up", fake_up)
    monkeypatch.setattr(
        StackConfig,
        "product",
        classmethod(lambda cls, env=None: StackConfig(tmp_path, Ports.free(), persistent=True)),
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["up", "--no-services"])
    assert ok.exit_code == 0, ok.output
    assert "not healthy" not in ok.output
    failing = runner.invoke(app, ["up"])
    assert failing.exit_code == 1
    assert "not healthy: decider" in failing.output
    assert started == [False, True]
    bad = runner.invoke(app, ["up", "--consumers", "0"])
    assert bad.exit_code == 2

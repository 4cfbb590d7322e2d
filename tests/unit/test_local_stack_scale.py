"""Scale-out of the local stack: N instances per service, idempotent, scaled up and down."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.local_stack import (
    ComponentStatus,
    LocalStack,
    Ports,
    ServiceSpec,
    StackConfig,
    StackError,
    instance_name,
    load_scale,
)
from mab_cli.main import app
from mab_cli.stack_cmd import _failed

pytestmark = pytest.mark.unit

SLEEPER = ServiceSpec(
    name="sleeper",
    module="deploy.local_stack",  # exists, so the spec counts as available
    argv=lambda p: [sys.executable, "-c", "import time; time.sleep(120)"],
    scaling="processes",
    alive_seconds=0.3,
)
SINGLE = ServiceSpec(
    name="single",
    module="deploy.local_stack",
    argv=lambda p: [sys.executable, "-c", "import time; time.sleep(120)"],
    alive_seconds=0.3,
)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[StackConfig]:
    cfg = StackConfig(run_dir=tmp_path, ports=Ports.free(), persistent=False)
    yield cfg
    LocalStack(cfg, services=[SLEEPER, SINGLE]).down()


def _stack(config: StackConfig, **scale: int) -> LocalStack:
    return LocalStack(config, services=[SLEEPER, SINGLE], scale=scale)


def _pids(stack: LocalStack) -> dict[str, int | None]:
    return {r.name: r.pid for r in stack.status() if r.name not in ("redis", "kafka")}


def test_instance_names() -> None:
    assert [instance_name("reward-consumer", i) for i in (1, 2, 3)] == [
        "reward-consumer",
        "reward-consumer.2",
        "reward-consumer.3",
    ]


def test_scale_up_is_idempotent_then_scales_down(config: StackConfig) -> None:
    stack = _stack(config, sleeper=3)
    for spec in stack.services:
        stack.scale_service(spec, note=lambda _: None)
    first = _pids(stack)
    assert set(first) == {"sleeper", "sleeper.2", "sleeper.3", "single"}
    assert all(first.values())
    assert len(set(first.values())) == 4

    again = _stack(config, sleeper=3)  # the same N: nothing restarted
    notes: list[str] = []
    for spec in again.services:
        again.scale_service(spec, note=notes.append)
    assert _pids(again) == first
    assert notes == [
        "sleeper: already running",
        "sleeper.2: already running",
        "sleeper.3: already running",
        "single: already running",
    ]

    down = _stack(config, sleeper=1)
    notes.clear()
    down.scale_service(SLEEPER, note=notes.append)
    assert notes == [
        "sleeper: already running",
        "sleeper.2: stopping (scaled to 1)",
        "sleeper.3: stopping (scaled to 1)",
    ]
    assert _pids(down) == {"sleeper": first["sleeper"], "single": first["single"]}


def test_wanted_counts_persist_across_up_calls(config: StackConfig) -> None:
    _stack(config, sleeper=2).start_services(note=lambda _: None)
    assert load_scale(config.run_dir) == {"sleeper": 2}
    later = LocalStack(config, services=[SLEEPER, SINGLE])  # no options: keep 2
    assert later.count(SLEEPER) == 2
    assert later.expected() == ["redis", "kafka", "sleeper", "sleeper.2", "single"]
    status = {r.name: r for r in later.status()}
    assert status["sleeper.2"].running
    assert status["sleeper.2"].healthy


def test_missing_instance_shows_as_not_running(config: StackConfig) -> None:
    stack = _stack(config, sleeper=2)
    stack.scale_service(SLEEPER, note=lambda _: None)
    stack.stop("sleeper.2")
    rows = {r.name: r for r in stack.status()}
    assert not rows["sleeper.2"].running
    failed = _failed(list(rows.values()), stack.expected())
    assert failed == ["redis", "kafka", "sleeper.2", "single"]  # nothing else was started


def test_bad_counts_and_unscalable_services_are_clear_errors(config: StackConfig) -> None:
    with pytest.raises(StackError, match=r"cannot scale \['single'\]"):
        _stack(config, single=2)
    with pytest.raises(StackError, match="sleeper=0: want a whole number from 1 to 32"):
        _stack(config, sleeper=0)


def test_processes_cannot_share_a_port() -> None:
    with pytest.raises(ValueError, match="use workers"):
        ServiceSpec(
            name="x", module="x", argv=lambda p: [], port=lambda p: p.api, scaling="processes"
        )


def test_no_services_is_not_a_failure(config: StackConfig) -> None:
    """`mab up --no-services` must not report services it was not asked to start."""
    stack = _stack(config)
    rows = [
        ComponentStatus("redis", 1, 1, True, True),
        ComponentStatus("kafka", 2, 2, True, True),
        ComponentStatus("sleeper", None, None, False, False),
        ComponentStatus("single", None, None, False, False),
    ]
    assert stack.expected(with_services=False) == ["redis", "kafka"]
    assert _failed(rows, stack.expected(with_services=False)) == []
    assert _failed(rows, stack.expected(with_services=True)) == ["sleeper", "single"]
    unhealthy_leftover = [*rows[:2], ComponentStatus("sleeper", 9, None, True, False)]
    assert _failed(unhealthy_leftover, stack.expected(with_services=False)) == ["sleeper"]


def test_worker_count_is_part_of_the_argv(config: StackConfig) -> None:
    spec = ServiceSpec(
        name="api",
        module="deploy.local_stack",
        argv=lambda p: ["server", "--port", str(p.api)],
        port=lambda p: p.api,
        scaling="workers",
    )
    one = LocalStack(config, services=[spec])
    assert one.service_argv(spec) == ["server", "--port", str(config.ports.api)]
    three = LocalStack(config, services=[spec], scale={"api": 3})
    assert three.service_argv(spec)[-2:] == ["--workers", "3"]
    assert three.expected() == ["redis", "kafka", "api", "api.w1", "api.w2", "api.w3"]


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

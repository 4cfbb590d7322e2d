"""Scale-out of the local stack (deploy/stack/scale.py): N instances per service,
idempotent, scaled up and down, remembered; and the warning when a consumer group is
asked for more members than its topics have partitions (Kafka gives each partition to
one member, the rest sit idle)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stack.config import StackConfig
from deploy.stack.errors import StackError
from deploy.stack.local import LocalStack
from deploy.stack.ports import Ports
from deploy.stack.scale import instance_name, load_scale
from deploy.stack.services import SERVICES, ServiceSpec
from deploy.stack.status import ComponentStatus
from mab_cli.stack_cmd import _failed
from schemas.topics import DEFAULT_PARTITIONS, TopicNames, topic_specs

pytestmark = pytest.mark.unit

PREFIX = "p-"
NAMES = TopicNames.with_prefix(PREFIX)
#: What the broker reports for freshly created product topics.
CREATED = {s.name: s.partitions for s in topic_specs(PREFIX)}

SLEEPER = ServiceSpec(
    name="sleeper",
    module="deploy.stack.local",  # exists, so the spec counts as available
    argv=lambda p: [sys.executable, "-c", "import time; time.sleep(120)"],
    scaling="processes",
    alive_seconds=0.3,
)
SINGLE = ServiceSpec(
    name="single",
    module="deploy.stack.local",
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


def _product_stack(tmp_path: Path, **scale: int) -> LocalStack:
    config = StackConfig(tmp_path, Ports(), persistent=False, topic_prefix=PREFIX)
    return LocalStack(config, services=SERVICES, scale=scale)


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
    assert later.scale.count(SLEEPER) == 2
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
        module="deploy.stack.local",
        argv=lambda p: ["server", "--port", str(p.api)],
        port=lambda p: p.api,
        scaling="workers",
    )
    one = LocalStack(config, services=[spec])
    assert one.service_argv(spec) == ["server", "--port", str(config.ports.api)]
    three = LocalStack(config, services=[spec], scale={"api": 3})
    assert three.service_argv(spec)[-2:] == ["--workers", "3"]
    assert three.expected() == ["redis", "kafka", "api", "api.w1", "api.w2", "api.w3"]


def test_no_warning_up_to_the_partition_count(tmp_path: Path) -> None:
    n = DEFAULT_PARTITIONS
    assert (
        _product_stack(tmp_path, **{"reward-consumer": n, "projector": n}).idle_members(CREATED)
        == []
    )


def test_members_beyond_the_partitions_are_named_idle(tmp_path: Path) -> None:
    stack = _product_stack(tmp_path, **{"reward-consumer": 8, "projector": 7})
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
    assert _product_stack(tmp_path, **{"reward-consumer": 8}).idle_members(wider) == []
    narrow = {**CREATED, NAMES.rewards: 2, NAMES.decisions: 2, NAMES.experiments: 2}
    (warning,) = _product_stack(tmp_path, **{"reward-consumer": 2, "projector": 3}).idle_members(
        narrow
    )
    assert warning.startswith("3 projector instances")
    assert "1 will sit idle" in warning


def test_a_stored_count_out_of_range_is_refused_a_broken_file_ignored(tmp_path: Path) -> None:
    (tmp_path / "scale.json").write_text('{"sleeper": 99}')
    with pytest.raises(StackError, match="sleeper=99: want a whole number from 1 to 32"):
        load_scale(tmp_path)
    for broken in ("[2]", "{not json", ""):
        (tmp_path / "scale.json").write_text(broken)
        assert load_scale(tmp_path) == {}

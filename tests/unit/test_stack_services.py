"""The service registry (deploy/stack/services.py): what each entry declares must be what
the process really does."""

from __future__ import annotations

import pytest

from deploy.stack.ports import Ports
from deploy.stack.services import SERVICES, ServiceSpec
from schemas.topics import TopicNames
from services.projector.consumer import Projector
from services.projector.settings import ProjectorSettings
from services.reward_consumer.consumer import RewardConsumer
from services.reward_consumer.settings import ConsumerSettings

pytestmark = pytest.mark.unit

PREFIX = "p-"
NAMES = TopicNames.with_prefix(PREFIX)


def test_the_registry_names_the_topics_each_group_subscribes_to() -> None:
    """The warning is only as true as ``consumes``: it must list what the processors
    subscribe to."""
    specs = {s.name: s for s in SERVICES}
    consumer = RewardConsumer(ConsumerSettings(mab_topic_prefix=PREFIX))
    projector = Projector(ProjectorSettings(mab_topic_prefix=PREFIX))
    for name, processor in (("reward-consumer", consumer), ("projector", projector)):
        declared = [getattr(NAMES, f) for f in specs[name].consumes]
        assert sorted(declared) == sorted(processor.subscribed), name


def test_processes_cannot_share_a_port() -> None:
    with pytest.raises(ValueError, match="use workers"):
        ServiceSpec(
            name="x", module="x", argv=lambda p: [], port=lambda p: p.api, scaling="processes"
        )


def test_every_registered_service_exists_and_has_its_health_check() -> None:
    """A service with a port is checked over HTTP on that port; one without counts as
    healthy once alive (the stream processors: on their metrics port)."""
    ports = Ports(api=18000, dashboard=18501)
    assert [s.name for s in SERVICES] == [
        "decider",
        "reward-consumer",
        "projector",
        "dashboard",
        "demo-traffic",
    ]
    assert all(s.available() for s in SERVICES)
    urls = {s.name: s.health_url(ports) for s in SERVICES}
    assert urls["decider"] == "http://127.0.0.1:18000/health"
    assert urls["dashboard"] == "http://127.0.0.1:18501/_stcore/health"
    assert urls["reward-consumer"] is None
    assert {s.name for s in SERVICES if s.metrics_port_env} == {"reward-consumer", "projector"}

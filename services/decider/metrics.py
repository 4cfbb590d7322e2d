"""Prometheus metrics of the decider (``GET /metrics``).

Labels are bounded on purpose: experiment ids are user-defined (up to 120 characters,
unlimited in number), so they are never a label. Decisions are counted per strategy,
rewards per outcome (accepted or the rejection reason), requests per route *template*
(``/experiments/{experiment_id}``, or ``unmatched``), method and status code. One
registry per app (not the global one): several apps in one test process stay apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from services.decider.producer import DeliveryStats

#: Latency buckets (s): the hot path answers in well under a millisecond, commands wait
#: for Kafka's ack (tens of ms), a sick dependency takes seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _DeliveryCollector(Collector):
    """Fire-and-forget decision events, read from the producer's counters at scrape time."""

    def __init__(self, stats: Callable[[], DeliveryStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "mab_decision_events",
            "DecisionMade events handed to Kafka without waiting, by outcome.",
            labels=["result"],
        )
        s = self._stats()
        if s is not None:
            family.add_metric(["enqueued"], s.enqueued)
            family.add_metric(["delivered"], s.delivered)
            family.add_metric(["failed"], s.failed)
        yield family


class DeciderMetrics:
    """The decider's metrics; label children are cached so a hot request does two dict
    hits and two lock-protected additions, not a label resolution each."""

    def __init__(self, delivery: Callable[[], DeliveryStats | None] = lambda: None) -> None:
        #: Replaced by the lifespan once the producer exists.
        self.delivery = delivery
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(_DeliveryCollector(lambda: self.delivery()))
        self._latency = Histogram(
            "mab_http_request_duration_seconds",
            "Time from request start to response start, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._requests = Counter(
            "mab_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._decisions = Counter(
            "mab_decisions",
            "Decisions served, by strategy (experiment ids are not labels).",
            ["strategy"],
            registry=self.registry,
        )
        self._rewards = Counter(
            "mab_rewards",
            "Rewards received by the API: accepted (logged) or the rejection reason.",
            ["outcome"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Callable[[float], None], Counter]] = {}
        self._decision_children: dict[str, Counter] = {}
        self._reward_children: dict[str, Counter] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._children.get(key)
        if child is None:
            child = (
                self._latency.labels(route, method).observe,
                self._requests.labels(route, method, str(status)),
            )
            self._children[key] = child
        child[0](seconds)
        child[1].inc()

    def decision(self, strategy: str) -> None:
        child = self._decision_children.get(strategy)
        if child is None:
            child = self._decision_children[strategy] = self._decisions.labels(strategy)
        child.inc()

    def reward(self, outcome: str) -> None:
        child = self._reward_children.get(outcome)
        if child is None:
            child = self._reward_children[outcome] = self._rewards.labels(outcome)
        child.inc()

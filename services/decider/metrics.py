"""Prometheus metrics of the decider (``GET /metrics``).

Labels are bounded on purpose: experiment ids are user-defined (up to 120 characters,
unlimited in number), so they are never a label. Decisions are counted per strategy,
rewards per outcome (accepted or the rejection reason), requests per route *template*
(``/experiments/{experiment_id}``, or ``unmatched``), method and status code. One
registry per app (not the global one): several apps in one test process stay apart.

One exception, on purpose: ``mab_srm_p_value{experiment_id}``, the SRM check's p-value,
is only useful per experiment. Its series are bounded by the experiments that exist and
have unit counts: it is set by ``/stats`` of an existing experiment and replaced as a
whole by the background refresh (:mod:`services.decider.srm`), which drops experiments
that are gone. An experiment without a p-value (too few units) has no series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
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


class _SrmGauge(Collector):
    """``mab_srm_p_value`` per experiment, from a plain dict (set on the event loop)."""

    def __init__(self) -> None:
        self.p_values: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "mab_srm_p_value",
            "Sample-ratio-mismatch check: p-value of the units' arms against their "
            "allocation versions (alarm below 0.001).",
            labels=["experiment_id"],
        )
        for experiment_id, p in list(self.p_values.items()):
            family.add_metric([experiment_id], p)
        yield family


#: The ``le`` label of each bucket, as ``prometheus_client`` writes it.
_BUCKET_LABELS: tuple[str, ...] = (*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf")


def _counter(
    name: str,
    documentation: str,
    labels: list[str],
    tally: Iterable[tuple[str | tuple[object, ...], int]],
) -> CounterMetricFamily:
    """A counter family from one of :class:`_Tally`'s dicts, whose key is the one label
    value or the tuple of them in ``labels`` order (a status code as its text)."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, n in list(tally):
        family.add_metric([key] if isinstance(key, str) else [str(v) for v in key], n)
    return family


class _Tally(Collector):
    """The per-request metrics as plain Python counters, turned into Prometheus
    families only when scraped.

    Why not ``prometheus_client``'s ``Histogram``/``Counter`` per request: each update
    takes a lock (and the histogram walks its buckets in Python), ~4 µs for the three
    updates of a decision, a few per cent of the whole request on the hot path. Here an
    update is a dict hit, a ``bisect`` and two additions. All updates and scrapes run on
    the event loop thread, so no lock is needed. The exposition (names, labels, buckets)
    is the one the ``Histogram``/``Counter`` pair produced.
    """

    def __init__(self) -> None:
        #: (route, method, status) -> requests
        self.requests: dict[tuple[str, str, int], int] = {}
        #: (route, method) -> [count per bucket (non-cumulative) ..., +Inf count, sum]
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.decisions: dict[str, int] = {}
        self.rewards: dict[str, int] = {}
        #: (assignment, outcome) -> unit decisions (services.decider.units)
        self.units: dict[tuple[str, str], int] = {}
        self.exposures: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            "mab_http_request_duration_seconds",
            "Time from request start to response start, by route template and method.",
            labels=["route", "method"],
        )
        for (route, method), counts in list(self.latency.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for label, count in zip(_BUCKET_LABELS, counts, strict=False):
                cumulative += count
                buckets.append((label, cumulative))
            latency.add_metric([route, method], buckets, counts[-1])
        yield latency
        yield _counter(
            "mab_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            self.requests.items(),
        )
        yield _counter(
            "mab_decisions",
            "Decisions served, by strategy (experiment ids are not labels).",
            ["strategy"],
            self.decisions.items(),
        )
        yield _counter(
            "mab_rewards",
            "Rewards received by the API: accepted (logged) or the rejection reason.",
            ["outcome"],
            self.rewards.items(),
        )
        yield _counter(
            "mab_unit_decisions",
            "Decisions for requests with a unit id, by assignment mode and outcome: "
            "new (a DecisionMade logged), returning (a sticky unit's stored arm, nothing "
            "logged; cached: from this worker's memory, stored: from Redis).",
            ["assignment", "outcome"],
            self.units.items(),
        )
        yield _counter(
            "mab_exposures",
            "Exposures received by POST /exposures: accepted, duplicate, unavailable or "
            "the rejection reason.",
            ["outcome"],
            self.exposures.items(),
        )


class DeciderMetrics:
    """The decider's metrics: process and delivery collectors, plus the per-request
    tallies of :class:`_Tally` (a hot request updates them without a lock)."""

    def __init__(self, delivery: Callable[[], DeliveryStats | None] = lambda: None) -> None:
        #: Replaced by the lifespan once the producer exists.
        self.delivery = delivery
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(_DeliveryCollector(lambda: self.delivery()))
        self._tally = _Tally()
        self.registry.register(self._tally)
        self._srm = _SrmGauge()
        self.registry.register(self._srm)

    def srm(self, experiment_id: str, p_value: float | None) -> None:
        """The SRM p-value of an existing experiment (``None``: none, no series)."""
        if p_value is None:
            self._srm.p_values.pop(experiment_id, None)
        else:
            self._srm.p_values[experiment_id] = p_value

    def replace_srm(self, p_values: dict[str, float | None]) -> None:
        """Every experiment's SRM p-value at once; experiments not named lose theirs."""
        self._srm.p_values = {e: p for e, p in p_values.items() if p is not None}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        tally = self._tally
        key = (route, method, status)
        tally.requests[key] = tally.requests.get(key, 0) + 1
        hist = tally.latency.get((route, method))
        if hist is None:
            hist = tally.latency[(route, method)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        hist[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def decision(self, strategy: str) -> None:
        decisions = self._tally.decisions
        decisions[strategy] = decisions.get(strategy, 0) + 1

    def unit_decision(self, assignment: str, outcome: str) -> None:
        units = self._tally.units
        key = (assignment, outcome)
        units[key] = units.get(key, 0) + 1

    def reward(self, outcome: str) -> None:
        rewards = self._tally.rewards
        rewards[outcome] = rewards.get(outcome, 0) + 1

    def exposure(self, outcome: str, n: int = 1) -> None:
        exposures = self._tally.exposures
        exposures[outcome] = exposures.get(outcome, 0) + n

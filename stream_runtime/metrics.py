"""Prometheus metrics of a stream processor, served on ``MAB_METRICS_PORT``.

Both processors (reward consumer, projector) run :class:`~stream_runtime.kafka_loop.
KafkaBatchProcessor`, which feeds one :class:`ProcessorMetrics`: committed batches and
their size, the time spent applying a batch to Redis (the fold or projection with its
reads and compare-and-set writes), records by outcome (every numeric field of the
service's batch report: applied, duplicates, redelivered, ...), rejects (dead letters)
by reason, failed batches, and consumer lag per partition.

Lag is ``last stable offset (or highwater) - position`` after a batch is committed:
the records of the partition this consumer has not applied yet. It is refreshed at most
once per :data:`LAG_EVERY_S` and only for partitions the consumer has fetched from.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as CounterType
from dataclasses import fields
from typing import TYPE_CHECKING, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from stream_runtime.batch import SummableReport

LAG_EVERY_S: Final = 1.0
BATCH_BUCKETS: Final = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ProcessorMetrics:
    """One registry per processor instance (tests embed several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.batches = Counter("mab_stream_batches", "Batches applied and committed.", registry=r)
        self.failed_batches = Counter(
            "mab_stream_failed_batches",
            "Batches whose Redis write failed (rewound and retried).",
            registry=r,
        )
        self.batch_records = Histogram(
            "mab_stream_batch_records",
            "Records per committed batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.fold_seconds = Histogram(
            "mab_stream_fold_duration_seconds",
            "Time to apply one batch to Redis (decode, read, fold, compare-and-set write).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.records = Counter(
            "mab_stream_records",
            "Records by outcome (the fields of the processor's batch report).",
            ["outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "mab_stream_rejected",
            "Records rejected (sent to the dead-letter sink), by reason.",
            ["reason"],
            registry=r,
        )
        self.lag = Gauge(
            "mab_stream_consumer_lag",
            "Records of the partition not applied yet (last stable offset - position).",
            ["topic", "partition"],
            registry=r,
        )

    def batch(self, records: int, seconds: float, report: SummableReport) -> None:
        """Account one committed batch."""
        self.batches.inc()
        self.batch_records.observe(records)
        self.fold_seconds.observe(seconds)
        self.outcomes(report)

    def outcomes(self, report: SummableReport) -> None:
        """Count a report's outcomes and rejects (also a second processor's report of a
        batch already accounted by :meth:`batch`, as the reward consumer's exposures)."""
        for f in fields(report):  # type: ignore[arg-type]
            value = getattr(report, f.name)
            if isinstance(value, CounterType):
                for reason, n in value.items():
                    if n:
                        self.rejected.labels(str(reason)).inc(n)
            elif isinstance(value, int | float) and value:
                self.records.labels(f.name).inc(value)

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Replace the lag gauges (partitions moved away in a rebalance disappear)."""
        self.lag.clear()
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic, str(partition)).set(lag)


class MetricsServer:
    """Prometheus' HTTP exporter on a thread (scrapes never touch the event loop)."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    registry: CollectorRegistry, port: int | None, host: str, log: logging.Logger
) -> MetricsServer | None:
    """Start the exporter if a port is configured (0: any free port, logged)."""
    if port is None:
        return None
    server = MetricsServer(registry, port, host)
    log.info("metrics served", extra={"metrics_url": f"http://{host}:{server.port}/metrics"})
    return server

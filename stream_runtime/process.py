"""Run a stream processor until SIGTERM/SIGINT, with one JSON log object per line.

A signal only sets an event that the processor's loop checks between batches, so the
batch in flight finishes its Redis write and its Kafka commit before the process leaves
its consumer group. (SIGKILL skips all that by definition; the stored offsets make a
redelivery harmless anyway.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import orjson
from prometheus_client import CollectorRegistry

from stream_runtime.kafka_connection import KafkaConnectionError
from stream_runtime.metrics import ProcessorMetrics, serve
from stream_runtime.settings import StreamSettings, load_settings

_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, including the ``extra=`` fields (topic, offset, reason)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # Non-str keys: counters by reason are keyed by ``Rejection`` members, which
        # orjson only writes (as their label) with this option.
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def freeze_startup_heap() -> None:
    """Move every object alive after start-up out of the cyclic collector's reach.

    Call it once a server is ready. Imports and start-up leave ~10^5 long-lived
    objects (FastAPI, pydantic, numpy, the clients); every full collection walked all
    of them. Under load, requests that wait a few milliseconds for Kafka survive the
    young generations, so full collections ran every ~3 s and each stopped the event
    loop for 60-100 ms: in the decider that was the whole POST /reward p99 (measured
    with ``gc.callbacks``: 65-80 ms before, 14 ms after, same run otherwise). Frozen
    objects are still freed by reference counting; only cyclic garbage made during
    start-up is kept, once. A collection first, so that garbage is not frozen. Only
    the first call of a process does anything (a test session starts many apps).
    """
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run_until_signal(
    log_level: str,
    run: Callable[[asyncio.Event], Awaitable[None]],
    *,
    metrics: CollectorRegistry | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Configure logs, serve ``metrics`` on ``metrics_port`` (if both are given), then
    ``await run(stop)`` where ``stop`` is set by SIGTERM/SIGINT.

    Kafka refusing the connection settings at start-up (a wrong password, an untrusted
    CA: :class:`~stream_runtime.kafka_connection.KafkaConnectionError`) is logged as one
    error naming the setting and ends the process with exit code 1, without a traceback:
    a supervisor shows the reason, and restarting would not help.
    """
    configure_logging(log_level)
    server = None
    if metrics is not None:
        server = serve(metrics, metrics_port, metrics_host, logging.getLogger("stream_runtime"))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    try:
        asyncio.run(main())
    except KafkaConnectionError as exc:
        logging.getLogger("stream_runtime").error(
            f"cannot start: {exc}", extra={"setting": exc.setting}
        )
        raise SystemExit(1) from None
    finally:
        if server is not None:
            server.close()


class StreamService(Protocol):
    """What :func:`run_stream_service` runs: a stream processor's loop and its metrics."""

    metrics: ProcessorMetrics

    async def run(self, stop: asyncio.Event) -> None: ...


StreamSettingsT = TypeVar("StreamSettingsT", bound=StreamSettings)


def run_stream_service(
    settings_type: type[StreamSettingsT], build: Callable[[StreamSettingsT], StreamService]
) -> None:
    """The ``__main__`` of a stream service: its settings from the environment (a bad one
    stops the process before it connects anywhere), then its loop until SIGTERM/SIGINT
    with its metrics served where the settings say."""
    settings = load_settings(settings_type)
    service = build(settings)
    run_until_signal(
        settings.log_level,
        service.run,
        metrics=service.metrics.registry,
        metrics_port=settings.mab_metrics_port,
        metrics_host=settings.mab_metrics_host,
    )

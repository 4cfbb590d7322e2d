"""``python -m services.projector``: run until SIGTERM/SIGINT, then shut down cleanly.

A signal only sets an event the loop checks between batches, so the batch in flight
finishes its Redis write and its Kafka commit before the process leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import orjson

from services.projector.consumer import Projector
from services.projector.settings import ProjectorSettings

_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, including the ``extra=`` fields."""

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
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


async def main() -> None:
    settings = ProjectorSettings()
    configure_logging(settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Projector(settings).run(stop)


if __name__ == "__main__":
    asyncio.run(main())

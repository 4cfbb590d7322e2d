"""``python -m demo_traffic``: drive the demo story against ``MAB_API_URL`` until SIGTERM.

The hourly dashboard view shows the shifts only after hours of real time (buckets use
the server's event time, not the simulated clock); the per-minute view
(``bucket=minute``) shows them within a few minutes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import orjson

from demo_traffic.runner import DemoTraffic
from demo_traffic.settings import DemoSettings

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


async def main() -> None:
    settings = DemoSettings()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await DemoTraffic(settings).run(stop)


if __name__ == "__main__":
    asyncio.run(main())

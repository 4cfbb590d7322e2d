"""``python -m demo_traffic``: drive the demo story against ``MAB_API_URL`` until SIGTERM.

The hourly dashboard view shows the shifts only after hours of real time (buckets use
the server's event time, not the simulated clock); the per-minute view
(``bucket=minute``) shows them within a few minutes.
"""

from __future__ import annotations

import logging

from demo_traffic.runner import DemoTraffic
from demo_traffic.settings import DemoSettings
from stream_runtime.process import run_until_signal

if __name__ == "__main__":
    settings = DemoSettings()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_until_signal(settings.log_level, DemoTraffic(settings).run)

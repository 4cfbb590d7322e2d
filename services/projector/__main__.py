"""``python -m services.projector``: run until SIGTERM/SIGINT, then shut down cleanly."""

from __future__ import annotations

from services.projector.consumer import Projector
from services.projector.settings import ProjectorSettings
from stream_runtime.process import run_until_signal
from stream_runtime.settings import load_settings

if __name__ == "__main__":
    settings = load_settings(ProjectorSettings)
    processor = Projector(settings)
    run_until_signal(
        settings.log_level,
        processor.run,
        metrics=processor.metrics.registry,
        metrics_port=settings.mab_metrics_port,
        metrics_host=settings.mab_metrics_host,
    )

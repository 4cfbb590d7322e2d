"""``python -m services.projector``: run until SIGTERM/SIGINT, then shut down cleanly."""

from __future__ import annotations

from services.projector.consumer import Projector
from services.projector.settings import ProjectorSettings
from stream_runtime.process import run_stream_service

if __name__ == "__main__":
    run_stream_service(ProjectorSettings, Projector)

"""``python -m services.reward_consumer``: run until SIGTERM/SIGINT, then shut down cleanly."""

from __future__ import annotations

from services.reward_consumer.consumer import RewardConsumer
from services.reward_consumer.settings import ConsumerSettings
from stream_runtime.process import run_stream_service

if __name__ == "__main__":
    run_stream_service(ConsumerSettings, RewardConsumer)

"""The reward consumer: rewards and decisions folded into experiment snapshots, exactly once.

What other packages may use (the CLI's replay, the tests' wiring): the processor
(:class:`SnapshotFold`, the pure fold the engine drives), its report, the service
(:class:`RewardConsumer`) and its settings. Everything else is internal.
"""

from services.reward_consumer.consumer import RewardConsumer
from services.reward_consumer.processor import FoldReport, SnapshotFold
from services.reward_consumer.settings import ConsumerSettings

__all__ = ["ConsumerSettings", "FoldReport", "RewardConsumer", "SnapshotFold"]

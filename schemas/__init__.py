"""Events, ids and topics shared by every service (and nothing else)."""

from schemas.codec import DecodeError, decode, decode_reward, encode
from schemas.events import (
    SCHEMA_VERSION,
    AnyEvent,
    ArmsAdded,
    ChangePointDetected,
    DecisionMade,
    Event,
    ExperimentConfig,
    ExperimentCreated,
    ExperimentEvent,
    GuardrailBreached,
    RewardObserved,
    StrategyChanged,
    WinnerDeclared,
    new_event_id,
)
from schemas.ids import ArmId, ExperimentId, is_valid_id, normalize_id
from schemas.topics import TopicNames, TopicSpec, partition_key, topic_specs

__all__ = [
    "SCHEMA_VERSION",
    "AnyEvent",
    "ArmId",
    "ArmsAdded",
    "ChangePointDetected",
    "DecisionMade",
    "DecodeError",
    "Event",
    "ExperimentConfig",
    "ExperimentCreated",
    "ExperimentEvent",
    "ExperimentId",
    "GuardrailBreached",
    "RewardObserved",
    "StrategyChanged",
    "TopicNames",
    "TopicSpec",
    "WinnerDeclared",
    "decode",
    "decode_reward",
    "encode",
    "is_valid_id",
    "new_event_id",
    "normalize_id",
    "partition_key",
    "topic_specs",
]

"""Pure logic of one poll batch: decode, group by experiment, drop what is already applied.

No I/O here, so the rules that make redelivery a no-op are unit-tested without Kafka
or Redis. The handler (:mod:`services.reward_consumer.handlers`) does the reads and
writes around these functions. The offset filter, the offsets to store/commit/seek and
the grouping are shared with the projector (:mod:`stream_runtime.batch`) and re-exported
here; this module adds the reward consumer's two-topic decoding and its fold state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bandit_core.fold import lookup_keys
from bandit_core.state import ExperimentState
from schemas.events import AnyEvent, DecisionMade, ExperimentConfig, RewardObserved
from stream_runtime.batch import (
    DecodedBatch,
    Positioned,
    RecordLike,
    Rejected,
    batch_dedupe_keys,
    commit_offsets,
    decode_reward_or_decision,
    filter_applied,
    first_offsets,
    group_by_experiment,
    new_offsets,
    offset_field,
    unknown_topic,
)

__all__ = [
    "DecodedBatch",
    "Positioned",
    "RecordLike",
    "Rejected",
    "batch_dedupe_keys",
    "build_state",
    "commit_offsets",
    "decode_batch",
    "decode_record",
    "filter_applied",
    "first_offsets",
    "fold_lookups",
    "new_offsets",
    "offset_field",
    "parse_offsets",
]


def decode_record(record: RecordLike, rewards_topic: str, decisions_topic: str) -> AnyEvent:
    """Decode one record of our two topics, or raise :class:`~schemas.codec.DecodeError`.

    Rewards accept the minimal bulk-producer contract. Their fallback event id is the
    record's log position and their fallback time the broker timestamp: both are
    deterministic, so a redelivered or replayed record folds (and dedupes) identically.
    """
    event = decode_reward_or_decision(record, rewards_topic, decisions_topic)
    if event is None:
        raise unknown_topic(record)
    return event


def decode_batch(
    records: Iterable[RecordLike], rewards_topic: str, decisions_topic: str
) -> DecodedBatch:
    """Decode every record; group valid ones by experiment in log order per partition."""
    return group_by_experiment(records, lambda r: decode_record(r, rewards_topic, decisions_topic))


def parse_offsets(raw: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, int]:
    """Decode an ``HGETALL`` of the offsets hash."""
    out: dict[str, int] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        out[key] = int(v)
    return out


def fold_lookups(items: Iterable[Positioned]) -> tuple[list[str], list[str]]:
    """What the fold will look up for ``items``: the ``seen`` keys
    (:func:`bandit_core.fold.lookup_keys`) and the decision ids whose open attribution
    window it may close or open, each without repeats."""
    keys: dict[str, None] = {}
    ids: dict[str, None] = {}
    for p in items:
        event = p.event
        for k in lookup_keys(event):
            keys[k] = None
        if isinstance(event, RewardObserved):
            if event.decision_id is not None:
                ids[event.decision_id] = None
        elif isinstance(event, DecisionMade) and event.attribution_window_s is not None:
            ids[event.decision_id] = None
    return list(keys), list(ids)


def build_state(
    experiment_id: str,
    config: ExperimentConfig,
    snapshot: bytes | None,
    seen: Mapping[str, float],
    pending: Mapping[str, float] | None = None,
) -> ExperimentState:
    """The state the fold starts from: stored snapshot + config key + the batch's views.

    ``seen`` holds only the batch's dedupe keys that Redis already knows and
    ``pending`` only the open attribution windows the batch names; those views are
    enough for :func:`bandit_core.fold.fold_batch` to fold this batch exactly as it
    would with the whole sets (the snapshot keeps the exact ``pending_count``).
    """
    state = ExperimentState.from_snapshot(snapshot, experiment_id)
    state.config = config
    state.seen = dict(seen)
    if pending:
        state.pending = dict(pending)
    return state

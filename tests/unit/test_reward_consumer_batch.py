"""Pure batch logic of the reward consumer: decoding, grouping, the offset filter."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from bandit_core.decision_ids import make_decision_id
from bandit_core.fold import DEDUPE_HORIZON_S, fold_batch
from schemas.codec import encode
from schemas.events import DecisionMade, ExperimentConfig, RewardObserved
from schemas.topics import TopicNames
from services.reward_consumer.batch import (
    Positioned,
    batch_dedupe_keys,
    build_state,
    commit_offsets,
    decode_batch,
    filter_applied,
    first_offsets,
    new_offsets,
    parse_offsets,
)
from services.reward_consumer.settings import ConsumerSettings
from services.reward_consumer.store import Assumed, Write, _write_args, prune_cutoff

pytestmark = pytest.mark.unit

T = TopicNames.with_prefix("t.")


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = 1_700_000_000_000


def reward(exp: str = "exp", arm: str = "a", r: float = 1.0, **kw: object) -> bytes:
    return encode(RewardObserved(experiment_id=exp, arm_id=arm, reward=r, ts=1.0, **kw))  # type: ignore[arg-type]


def decision(exp: str = "exp", arm: str = "a") -> bytes:
    return encode(
        DecisionMade(
            experiment_id=exp,
            decision_id=make_decision_id(0),
            arm_id=arm,
            strategy="thompson",
            propensity=0.5,
            config_version=1,
            snapshot_version=0,
            ts=1.0,
        )
    )


def test_decode_groups_by_experiment_and_rejects_with_reasons() -> None:
    recs = [
        Rec(T.rewards, 0, 0, reward("x")),
        Rec(T.rewards, 0, 1, b"{not json"),
        Rec(T.decisions, 2, 5, decision("y")),
        Rec(T.rewards, 1, 3, reward("y")),
        Rec(T.rewards, 0, 2, None),
        Rec(T.decisions, 2, 6, reward("y")),  # a reward on the decisions topic
        Rec(T.rewards, 0, 4, orjson.dumps({"experiment_id": "x", "arm_id": "a", "reward": 2})),
        Rec("other", 0, 0, reward("x")),
    ]
    out = decode_batch(recs, T.rewards, T.decisions)
    assert {k: [p.record.offset for p in v] for k, v in out.by_experiment.items()} == {
        "x": [0],
        "y": [5, 3],
    }
    assert [(r.record.offset, r.reason) for r in out.rejected] == [
        (1, "bad_json"),
        (2, "empty"),
        (6, "wrong_event_type"),
        (4, "reward_out_of_range"),
        (0, "unknown_topic"),
    ]


def test_minimal_reward_gets_deterministic_id_and_broker_time() -> None:
    raw = orjson.dumps({"experiment_id": "x", "arm_id": "a", "reward": 0.5})
    rec = Rec(T.rewards, 3, 42, raw, timestamp=1_700_000_000_500)
    ev = decode_batch([rec, rec], T.rewards, T.decisions).by_experiment["x"]
    assert ev[0].event == ev[1].event
    assert isinstance(ev[0].event, RewardObserved)
    assert ev[0].event.event_id == f"{T.rewards}:3:42"
    assert ev[0].event.ts == pytest.approx(1_700_000_000.5)


def _positioned(topic: str, partition: int, offsets: list[int]) -> list[Positioned]:
    event = RewardObserved(experiment_id="x", arm_id="a", reward=1.0)
    return [Positioned(Rec(topic, partition, o, b""), event) for o in offsets]


def test_filter_applied_drops_at_or_below_stored_offset_per_partition() -> None:
    items = _positioned("r", 0, [4, 5, 6]) + _positioned("r", 1, [1, 2]) + _positioned("d", 0, [9])
    fresh, dropped = filter_applied(items, {"r:0": 5, "r:1": 0})
    assert [(p.field, p.record.offset) for p in fresh] == [
        ("r:0", 6),
        ("r:1", 1),
        ("r:1", 2),
        ("d:0", 9),
    ]
    assert dropped == 2


def test_filter_applied_with_nothing_stored_keeps_offset_zero() -> None:
    fresh, dropped = filter_applied(_positioned("r", 0, [0, 1]), {})
    assert len(fresh) == 2
    assert dropped == 0


def test_new_offsets_and_commit_offsets() -> None:
    items = _positioned("r", 0, [7, 9, 8]) + _positioned("d", 3, [2])
    assert new_offsets(items) == {"r:0": 9, "d:3": 2}
    recs = [p.record for p in items]
    assert commit_offsets(recs) == {("r", 0): 10, ("d", 3): 3}
    assert first_offsets(recs) == {("r", 0): 7, ("d", 3): 2}


def test_redelivery_of_a_whole_batch_is_a_noop() -> None:
    """Applying a batch, storing its offsets, then filtering the same batch leaves nothing."""
    items = _positioned("r", 0, [0, 1, 2])
    fresh, _ = filter_applied(items, {})
    stored = new_offsets(fresh)
    again, dropped = filter_applied(items, stored)
    assert again == []
    assert dropped == 3


def test_batch_dedupe_keys_are_unique_and_include_decision_ids() -> None:
    did = make_decision_id(0)
    a = RewardObserved(experiment_id="x", arm_id="a", reward=1.0, decision_id=did, event_id="e1")
    b = RewardObserved(experiment_id="x", arm_id="a", reward=1.0, event_id="e1")
    items = [Positioned(Rec("r", 0, i, b""), ev) for i, ev in enumerate([a, b])]
    assert batch_dedupe_keys(items) == [f"d:{did}", "e:e1"]


def test_build_state_feeds_fold_with_seen_view() -> None:
    cfg = ExperimentConfig(
        experiment_id="x",
        arm_ids=("a",),
        strategy="thompson",
        version=1,
        created_ts=0,
        updated_ts=0,
    )
    state = build_state("x", cfg, None, {"e:old": 1.0})
    res = fold_batch(
        state, [RewardObserved(experiment_id="x", arm_id="a", reward=1.0, event_id="old")]
    )
    assert res.outcomes == ["duplicate"]
    assert parse_offsets({b"r:0": b"12"}) == {"r:0": 12}


def test_prune_cutoff_clamps_future_timestamps() -> None:
    assert prune_cutoff({}) is None
    assert prune_cutoff({"e:a": 100.0}, now=1000.0) == 100.0 - DEDUPE_HORIZON_S
    assert prune_cutoff({"e:a": 1e12}, now=1000.0) == 1000.0 - DEDUPE_HORIZON_S


def test_write_args_layout() -> None:
    w = Write("x", b"snap", expected={"r:0": 4}, new={"r:0": 9, "d:1": 2}, new_seen={"e:a": 5.0})
    args = _write_args(w)
    assert args[0] == b"snap"
    # Offsets as strings (Lua compares them with HGET's strings; a Lua number would print
    # big offsets in exponent form), the dedupe keys as one JSON object.
    assert [orjson.loads(a) for a in args[2:7]] == [
        {"r:0": "4"},
        {"r:0": "9", "d:1": "2"},
        {},  # no attribution windows opened
        [],  # nor closed
        {"e:a": 5.0},
    ]
    assert args[7:] == [""]  # folded from a read: no assumptions
    w = Write(
        "x",
        b"snap",
        expected={},
        new={"r:0": 1},
        new_seen={},
        pending_added={"a.0": 70.5},
        pending_removed=["b.1", "c.0"],
        assumed=Assumed(b"cfg", b"old", ["e:q"], ["a.0"]),
    )
    args = _write_args(w)
    assert args[1] == ""  # nothing new: no pruning
    assert orjson.loads(args[4]) == {"a.0": 70.5}
    assert orjson.loads(args[5]) == ["b.1", "c.0"]
    assert args[7:10] == ["1", b"cfg", b"old"]
    assert [orjson.loads(a) for a in args[10:]] == [["e:q"], ["a.0"]]


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAB_TOPIC_PREFIX", "p.")
    monkeypatch.setenv("MAB_REDIS_PREFIX", "rp:")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("MAB_MAX_BATCH_RECORDS", "17")
    s = ConsumerSettings()
    assert s.topics.rewards == "p.mab.rewards"
    assert s.keys.experiment("e").snapshot == "rp:mab:{e}:snap"
    assert s.log_level == "DEBUG"
    assert s.max_batch_records == 17
    assert s.group_id == "mab-reward-consumer"
    monkeypatch.setenv("MAB_MAX_BATCH_RECORDS", "0")
    with pytest.raises(ValueError):
        ConsumerSettings()

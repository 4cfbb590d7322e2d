"""Pure batch logic of the reward consumer: decoding, grouping, the offset guard, the
write's named arguments."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from bandit_core.decision_ids import make_decision_id
from bandit_core.fold import DEDUPE_HORIZON_S, fold_batch
from schemas.codec import encode
from schemas.events import AnyEvent, RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.projector.processor import batch_dedupe_keys
from services.reward_consumer.processor import SnapshotFold, build_state
from services.reward_consumer.settings import ConsumerSettings
from stream_runtime.batch import (
    DecodedBatch,
    Group,
    commit_offsets,
    decode_batch,
    first_offsets,
    offset_field,
)
from stream_runtime.engine import fresh_records
from stream_runtime.processor import Changes, ZAdd
from stream_runtime.redis_store import write_args
from stream_runtime.state_store import Assumptions, Write, prune_cutoff
from tests.fixtures.events import config_of, decision_of

pytestmark = pytest.mark.unit

T = TopicNames.with_prefix("t.")
FOLD = SnapshotFold(T, RedisKeys("t."))


def decode(records: list[Rec]) -> DecodedBatch:
    return decode_batch(records, FOLD.decoders)


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
    return encode(decision_of(exp, arm, 0, 1.0))


def test_decode_groups_by_experiment_and_rejects_with_reasons() -> None:
    recs = [
        Rec(T.rewards, 0, 0, reward("x")),
        Rec(T.rewards, 0, 1, b"{not json"),
        Rec(T.decisions, 2, 5, decision("y")),
        Rec(T.rewards, 1, 3, reward("y")),
        Rec(T.rewards, 0, 2, None),
        Rec(T.decisions, 2, 6, reward("y")),  # a reward on the decisions topic
        Rec(T.rewards, 0, 4, orjson.dumps({"experiment_id": "x", "arm_id": "a", "reward": -2})),
        Rec("other", 0, 0, reward("x")),
    ]
    out = decode(recs)
    assert {k: [r.offset for r in v.records] for k, v in out.groups.items()} == {
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
    ev = decode([rec, rec]).groups["x"].events
    assert ev[0] == ev[1]
    assert isinstance(ev[0], RewardObserved)
    assert ev[0].event_id == f"{T.rewards}:3:42"
    assert ev[0].ts == pytest.approx(1_700_000_000.5)


def _group(*parts: tuple[str, int, list[int]]) -> Group:
    event = RewardObserved(experiment_id="x", arm_id="a", reward=1.0)
    group = Group()
    for topic, partition, offsets in parts:
        for o in offsets:
            group.add(Rec(topic, partition, o, b""), event, offset_field(topic, partition))
    return group


def test_filter_applied_drops_at_or_below_stored_offset_per_partition() -> None:
    group = _group(("r", 0, [4, 5, 6]), ("r", 1, [1, 2]), ("d", 0, [9]))
    fresh, dropped = fresh_records(group, {"r:0": 5, "r:1": 0})
    assert [(f"{r.topic}:{r.partition}", r.offset) for r in fresh.records] == [
        ("r:0", 6),
        ("r:1", 1),
        ("r:1", 2),
        ("d:0", 9),
    ]
    assert dropped == 2


def test_filter_applied_with_nothing_stored_keeps_offset_zero() -> None:
    fresh, dropped = fresh_records(_group(("r", 0, [0, 1])), {})
    assert len(fresh) == 2
    assert dropped == 0


def test_new_offsets_and_commit_offsets() -> None:
    group = _group(("r", 0, [7, 9, 8]), ("d", 3, [2]))
    assert group.last == {"r:0": 9, "d:3": 2}  # what the write stores
    recs = group.records
    assert commit_offsets(recs) == {("r", 0): 10, ("d", 3): 3}
    assert first_offsets(recs) == {("r", 0): 7, ("d", 3): 2}


def test_redelivery_of_a_whole_batch_is_a_noop() -> None:
    """Applying a batch, storing its offsets, then filtering the same batch leaves nothing."""
    group = _group(("r", 0, [0, 1, 2]))
    fresh, _ = fresh_records(group, {})
    stored = fresh.last
    again, dropped = fresh_records(group, stored)
    assert again.records == []
    assert dropped == 3


def test_batch_dedupe_keys_are_unique_and_include_decision_ids() -> None:
    did = make_decision_id(0)
    a = RewardObserved(experiment_id="x", arm_id="a", reward=1.0, decision_id=did, event_id="e1")
    b = RewardObserved(experiment_id="x", arm_id="a", reward=1.0, event_id="e1")
    events: list[AnyEvent] = [a, b]
    assert batch_dedupe_keys(events) == [f"d:{did}", "e:e1"]


def test_build_state_feeds_fold_with_seen_view() -> None:
    cfg = config_of("x", ("a",), ts=0)
    state = build_state("x", cfg, None, {"e:old": 1.0})
    res = fold_batch(
        state, [RewardObserved(experiment_id="x", arm_id="a", reward=1.0, event_id="old")]
    )
    assert res.outcomes == ["duplicate"]


def test_prune_cutoff_clamps_future_timestamps() -> None:
    h = DEDUPE_HORIZON_S
    assert prune_cutoff({}.values(), h) is None
    assert prune_cutoff({"e:a": 100.0}.values(), h, now=1000.0) == 100.0 - DEDUPE_HORIZON_S
    assert prune_cutoff({"e:a": 1e12}.values(), h, now=1000.0) == 1000.0 - DEDUPE_HORIZON_S


def test_write_args_layout() -> None:
    w = Write(
        "x",
        "o",
        expected={"r:0": 4},
        new={"r:0": 9, "d:1": 2},
        seen="s",
        new_seen={"e:a": 5.0},
        changes=Changes(set={"snap": b"snap"}),
    )
    keys, args = write_args(w, now=1000.0)
    table = orjson.loads(args[0])
    assert args[1:] == [b"snap"]  # byte strings as their own arguments, named by position
    assert table["set"] == [["snap", 2]]
    # Offsets as strings (Lua compares them with HGET's strings; a Lua number would print
    # big offsets in exponent form), the dedupe keys as one JSON object.
    assert (table["offsets"], table["expected"], table["new"]) == (
        "o",
        {"r:0": "4"},
        {"r:0": "9", "d:1": "2"},
    )
    assert table["zadd"] == [["s", {"e:a": 5.0}, repr(5.0 - DEDUPE_HORIZON_S)]]
    assert table["zrem"] == []  # no attribution windows closed
    assert (table["equal"], table["absent"]) == ([], [])  # folded from a read: no assumptions
    assert keys[:2] == ["o", "s"]
    w = Write(
        "x",
        "o",
        expected={},
        new={"r:0": 1},
        seen="s",
        new_seen={},
        changes=Changes(zadd={"p": ZAdd({"a.0": 70.5})}, zrem={"p": ["b.1", "c.0"]}),
        assumed=Assumptions(
            {"cfg": b"cfg", "snap": b"old", "gone": None}, {"s": ["e:q"], "p": ["a.0"]}
        ),
    )
    keys, args = write_args(w, now=1000.0)
    table = orjson.loads(args[0])
    assert table["zadd"] == [["p", {"a.0": 70.5}, ""]]  # nothing new to dedupe: no pruning
    assert table["zrem"] == [["p", ["b.1", "c.0"]]]
    assert table["equal"] == [["cfg", 2], ["snap", 3], ["gone", 0]]  # 0: must be missing
    assert args[1:] == [b"cfg", b"old"]
    assert table["absent"] == [["s", ["e:q"]], ["p", ["a.0"]]]
    assert set(keys) == {"o", "s", "cfg", "snap", "gone", "p"}


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

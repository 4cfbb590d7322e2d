"""Pure parts of ``mab replay``: key parsing, partition split, horizon, comparison, the
scratch namespace's slots, the refusal text."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from redis.crc import key_slot

from bandit_core.fold import DEDUPE_HORIZON_S
from mab_cli.replay_cmd import parse_timestamp
from mab_cli.replay_guard import ProcessorGroups, refusal
from mab_cli.replay_redis import Namespace, compare, split_key, within_horizon
from mab_cli.replay_runs import ReplayTarget
from schemas.events import RewardObserved
from schemas.redis_keys import RedisKeys
from services.projector import Retention
from stream_runtime.batch import (
    Decoder,
    Group,
    decode_decision_record,
    decode_reward_record,
    offset_field,
)
from stream_runtime.kafka_consumer import KafkaRecord
from stream_runtime.kafka_metadata import GroupMember
from stream_runtime.replay import partition_sizes, select, split_partitions

pytestmark = pytest.mark.unit


def test_split_key_only_accepts_experiment_keys_of_the_prefix() -> None:
    assert split_key("t1-", "t1-mab:{cta}:ts:h:3600") == ("cta", "ts:h:3600")
    assert split_key("t1-", "t1-mab:{cta}:snap") == ("cta", "snap")
    assert split_key("t1-", "t1-replay-ab-mab:{cta}:snap") is None  # scratch keys
    assert split_key("t1-", "t1-mab:experiments") is None
    assert split_key("", "mab:{x}:config") == ("x", "config")


def test_partitions_are_dealt_round_robin_without_empty_workers() -> None:
    assert split_partitions(6, 2) == [(0, 2, 4), (1, 3, 5)]
    assert split_partitions(2, 8) == [(0,), (1,)]
    assert split_partitions(3, 1) == [(0, 1, 2)]


def test_split_partitions_by_size_balances_the_records() -> None:
    # Round-robin would give (0, 2, 4) 600 records and (1, 3, 5) 300.
    sizes = {0: 300, 1: 100, 2: 150, 3: 100, 4: 150, 5: 100}
    parts = split_partitions(6, 2, sizes)
    assert sorted(p for w in parts for p in w) == list(range(6))
    loads = sorted(sum(sizes[p] for p in w) for w in parts)
    assert loads == [400, 500]  # largest first to the least loaded (optimum: 450 each)
    assert split_partitions(2, 8, {0: 5, 1: 0}) == [(0,), (1,)]


def test_partition_sizes_sums_topics_from_their_start() -> None:
    until = {"r:0": 9, "d:0": 4, "r:1": -1, "d:1": 99}
    assert partition_sizes(until, {"d:1": 50}) == {0: 15, 1: 50}


def test_dedupe_sets_are_compared_within_the_horizon() -> None:
    newest = 10 * DEDUPE_HORIZON_S
    members = {"e:new": newest, "e:edge": newest - DEDUPE_HORIZON_S, "e:old": 1.0}
    edge = newest - DEDUPE_HORIZON_S
    assert within_horizon(members, now=newest) == {"e:new": newest, "e:edge": edge}
    # a far-future member cannot hide everything else
    assert "e:new" in within_horizon({**members, "e:future": 1e15}, now=newest)


def test_compare_names_every_differing_key_and_field() -> None:
    live = Namespace("p-")
    live.experiments = {
        "e": {"snap": {"arms": {"a": [1, 2.0]}, "version": 3}, "ts:h:0": {"a|d": "4"}},
        "gone": {"config": {"x": 1}},
    }
    live.index = {"e": 1.0}
    replay = Namespace("q-")
    replay.experiments = {
        "e": {"snap": {"arms": {"a": [1, 2.5]}, "version": 3}, "ts:h:60": {"a|d": "1"}},
    }
    replay.index = {"e": 1.0}
    diffs = compare(live, replay)
    assert "mab:{e}:snap/arms/a[1]: live 2.0 != replay 2.5" in diffs
    assert "mab:{e}:ts:h:0: only live" in diffs
    assert "mab:{e}:ts:h:60: only in replay" in diffs
    assert "mab:{gone}:config: only live" in diffs
    assert compare(live, live) == []


def test_select_keeps_a_processors_topics_up_to_its_stops() -> None:
    """Replay hands each processor the records of its topics at or below its stops;
    the group itself when that is all of them (``Group.last`` is what the write stores)."""
    event = RewardObserved(experiment_id="e", arm_id="a", reward=1.0)
    group = Group()
    for o in range(5):
        for t, p in (("r", 0), ("d", 3), ("x", 0)):
            group.add(KafkaRecord(t, p, o, 0, b""), event, offset_field(t, p))
    assert group.last == {"r:0": 4, "d:3": 4, "x:0": 4}
    decoders: dict[str, Decoder] = {"r": decode_reward_record, "d": decode_decision_record}
    both = {**decoders, "x": decode_reward_record}
    assert select(group, both, None) is group
    assert select(group, both, {"r:0": 9, "d:3": 4, "x:0": 4}) is group
    mine = select(group, decoders, {"r:0": 2, "d:3": 9})
    assert [(r.topic, r.offset) for r in mine.records] == [
        (t, o) for o in range(5) for t in ("r", "d") if t == "d" or o <= 2
    ]
    assert mine.last == {"r:0": 2, "d:3": 4}


def test_timestamps_parse_as_unix_seconds_or_iso_utc() -> None:
    assert parse_timestamp("1700000000.5") == 1700000000.5
    assert parse_timestamp("2026-01-01T00:00:00") == 1767225600.0
    assert parse_timestamp("2026-01-01T01:00:00+01:00") == 1767225600.0
    with pytest.raises(typer.BadParameter):
        parse_timestamp("yesterday")


@pytest.mark.parametrize("live_prefix", ["", "tenant-a:", "t1a2b3c4d-"])
def test_scratch_keys_lie_in_the_slot_of_the_live_key_they_replace(live_prefix: str) -> None:
    """On a Redis Cluster the swap (one MULTI of DEL and RENAME per experiment) and the
    bulk loads only work if every scratch key hashes like its live key."""
    target = ReplayTarget("k:9092", "redis://r", "", live_prefix, Retention(3600, 60))
    scratch = target.scratch_prefix()
    assert scratch.startswith(live_prefix)
    assert scratch != target.scratch_prefix()  # a fresh namespace per run
    for exp in ("cta", "blue.button-2", "E" * 120):
        live, rebuilt = RedisKeys(live_prefix).experiment(exp), RedisKeys(scratch).experiment(exp)
        pairs = [
            (getattr(live, f.name), getattr(rebuilt, f.name)) for f in dataclasses.fields(live)
        ]
        pairs.append((live.hour_bucket(3600), rebuilt.hour_bucket(3600)))
        pairs.append((live.minute_bucket(60), rebuilt.minute_bucket(60)))
        slot = key_slot(live.config.encode())
        for a, b in pairs:
            assert key_slot(a.encode()) == key_slot(b.encode()) == slot, (a, b)


def test_the_refusal_names_each_member_and_how_to_stop_it() -> None:
    groups = ProcessorGroups("mab-reward-consumer", "mab-projector")
    members = [
        GroupMember("mab-projector", "mab-projector-7f11", "10.0.0.7", ("mab.rewards",)),
        GroupMember("mab-reward-consumer", "c-1", "10.0.0.5", ("mab.decisions", "mab.rewards")),
        GroupMember("mab-reward-consumer", "c-2", "10.0.0.6", ()),  # joining, no partitions yet
        GroupMember("warehouse", "s3-sink", "10.0.0.9", ("mab.rewards",)),
    ]
    text = refusal(members, groups, "mab replay --rebuild")
    assert text.startswith("mab replay --rebuild refused, nothing was written")
    assert "group 'mab-reward-consumer', the reward consumer's group " in text
    assert "(MAB_CONSUMER_GROUP_ID): 2 live members" in text
    assert "group 'mab-projector', the projector's group (MAB_PROJECTOR_GROUP_ID): 1 live" in text
    assert "group 'warehouse', another group reading the topics: 1 live member" in text
    assert "client id 'c-1' on host 10.0.0.5 reading mab.decisions, mab.rewards" in text
    assert "client id 'c-2' on host 10.0.0.6\n" in text
    for command in (
        "mab down && mab up --no-services",
        "docker compose stop reward-consumer projector",
        "kubectl -n mab scale deployment/reward-consumer deployment/projector --replicas=0",
    ):
        assert command in text
    assert "--force" in text
    # API callers without configured groups: every group is one reading the topics
    assert "group 'warehouse', reads the topics" in refusal(members, None, "rebuild")

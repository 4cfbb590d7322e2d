"""Pure parts of ``mab replay``: key parsing, partition split, horizon, comparison."""

from __future__ import annotations

import pytest
import typer

from bandit_core.fold import DEDUPE_HORIZON_S
from mab_cli.replay import _last_offsets, partition_sizes, split_partitions
from mab_cli.replay_cmd import parse_timestamp
from mab_cli.replay_redis import Namespace, compare, split_key, within_horizon
from services.projector.projection import Positioned, new_offsets

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


def test_last_offsets_equal_new_offsets_for_log_ordered_items() -> None:
    class R:
        def __init__(self, topic: str, partition: int, offset: int) -> None:
            self.topic, self.partition, self.offset = topic, partition, offset
            self.timestamp, self.value = 0, None

    items = [Positioned(R(t, p, o), None) for o in range(5) for t in ("r", "d") for p in (0, 3)]  # type: ignore[arg-type]
    assert _last_offsets(items) == new_offsets(items) == {"r:0": 4, "r:3": 4, "d:0": 4, "d:3": 4}


def test_timestamps_parse_as_unix_seconds_or_iso_utc() -> None:
    assert parse_timestamp("1700000000.5") == 1700000000.5
    assert parse_timestamp("2026-01-01T00:00:00") == 1767225600.0
    assert parse_timestamp("2026-01-01T01:00:00+01:00") == 1767225600.0
    with pytest.raises(typer.BadParameter):
        parse_timestamp("yesterday")

"""Scale-out on one machine: 1 and 3 processes of one consumer group give identical state."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.streams import (
    LiveNamespace,
    dump_namespace,
    expected_states,
    produce,
    read_states,
    spread_ids,
    start_processor,
    stop_processor,
    wait_caught_up,
    write_configs,
)
from tests.fixtures.workload import configs_for, workload

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("drop_namespace")]

#: The issue's figure: big enough that every process of the group folds for a while.
N_RECORDS = 200_000


def _stopped_stats(log: Path, message: str) -> dict[str, Any]:
    """The stats a processor logs when it stops after SIGTERM."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{") and f'"msg":"{message}"' in line:
            stats: dict[str, Any] = json.loads(line)
            return stats
    raise AssertionError(f"no {message!r} line in {log}")


CONSUMER = ("services.reward_consumer", "reward consumer", "consumer")
PROJECTOR = ("services.projector", "projector", "projector")


async def _run_group(
    n: int,
    label: str,
    kinds: tuple[tuple[str, str, str], ...],
    *,
    live: LiveNamespace,
    tmp_path: Path,
    must_share: bool = True,
) -> float:
    """Run ``n`` processes of each of ``kinds`` (own group per kind, key namespace
    ``<ns><label>:``) until every group committed the end of its topics; SIGTERM them and
    check every process exited 0 (and, with ``must_share``, that every process was assigned
    partitions and every reward consumer folded part of the records).
    Returns seconds."""
    names = live.names
    prefix = f"{live.ns}{label}:"
    topics = {
        "consumer": [names.rewards, names.decisions],
        # The consumers publish change points: the projector reads them too.
        "projector": [names.rewards, names.decisions, names.experiments],
    }
    group_env = {"consumer": "MAB_CONSUMER_GROUP_ID", "projector": "MAB_PROJECTOR_GROUP_ID"}
    procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    started = time.monotonic()
    try:
        for module, _, kind in kinds:
            # At INFO the processes log their partition assignments and final stats.
            env = live.env(
                LOG_LEVEL="INFO", MAB_REDIS_PREFIX=prefix, **{group_env[kind]: f"{prefix}{kind}"}
            )
            for i in range(n):
                log = tmp_path / f"{label}-{kind}-{i}-{time.monotonic_ns()}.log"
                procs.append((kind, log, start_processor(module, env, log)))
        if must_share:
            # Every member joins while the others still run, so each group rebalances.
            deadline = time.monotonic() + 180
            while not all(_was_assigned(log) for _, log, _ in procs):
                assert time.monotonic() < deadline, "not every process joined its group"
                await asyncio.sleep(0.2)
        for _, _, kind in kinds:
            mine = [(log, p) for k, log, p in procs if k == kind]
            await wait_caught_up(
                live.kafka_bootstrap,
                f"{prefix}{kind}",
                topics[kind],
                within=900,
                procs=[p for _, p in mine],
                log=mine[0][0],
            )
        elapsed = time.monotonic() - started
    finally:
        codes = [stop_processor(p) for _, _, p in procs]
    assert codes == [0] * len(procs), [log.read_text()[-2000:] for _, log, _ in procs]
    stopped = {kind: f"{name} stopped" for _, name, kind in kinds}
    for kind, log, _ in procs:
        stats = _stopped_stats(log, stopped[kind])
        if not must_share:
            continue
        assert _was_assigned(log), f"{log.name} got no partition: the group did not share"
        # The projector folds the whole workload in a few seconds, often before the
        # group's later members have started; the reward consumers, slower per record,
        # still fold while their group rebalances, so each must have folded a share.
        assert stats["records"] > 0 or kind == "projector", (
            f"{log.name} folded nothing: the group did not share the work"
        )
    return round(elapsed, 1)


def _was_assigned(log: Path) -> bool:
    """Did this process get partitions of its group at least once?"""
    return any(
        line.startswith("{")
        and '"msg":"partitions assigned"' in line
        and bool(json.loads(line).get("partitions"))
        for line in log.read_text(errors="replace").splitlines()
    )


@pytest.mark.timeout(1500)
async def test_one_and_three_processes_build_identical_state(
    live: LiveNamespace,
    tmp_path: Path,
) -> None:
    """Scenario: 200,000 records (decisions; minimal, joined, retried and doubly rewarded
    rewards) of 12 experiments, two per partition, are in the topics. One reward
    consumer and one projector fold all of them into key namespace A; then three
    reward consumers and three projectors (other groups) fold them into namespace B,
    joining one after another (so the groups rebalance while they work).
    We expect: every process exits 0 after its group shared the partitions with it (each
    reward consumer folding a share of the records), and the two
    namespaces hold identical keys and values (snapshots, applied offsets, dedupe keys,
    hour and minute buckets, change points), and the snapshots equal the pure fold of
    every record exactly once."""
    ids = spread_ids("shop-", per_partition=2, partitions=live.topics[live.names.rewards])
    configs = configs_for(ids)
    t0 = time.monotonic()
    sent = await produce(live.kafka_bootstrap, workload(live.names, ids, N_RECORDS))
    produced_s = time.monotonic() - t0
    want = expected_states(sent, configs, live.names)
    assert sum(s.duplicates for s in want.values()) > 0

    run = functools.partial(_run_group, live=live, tmp_path=tmp_path)
    timings: dict[str, float] = {}
    for n, label in ((1, "one"), (3, "three")):
        await write_configs(live.redis, f"{live.ns}{label}:", configs.values())
        timings[label] = await run(n, label, (CONSUMER, PROJECTOR))
    # Both consumer groups published the change points they detected; the first
    # projector group has not read the second group's copies (same event ids) yet.
    timings["one, projector tail"] = await run(1, "one", (PROJECTOR,), must_share=False)
    print(f"\nproduced {len(sent)} in {produced_s:.1f}s; seconds per run: {timings}")
    dumps = {
        label: await dump_namespace(live.redis, f"{live.ns}{label}:") for label in ("one", "three")
    }
    one, three = dumps["one"], dumps["three"]
    assert sorted(one) == sorted(three)
    assert any(":ts:m:" in k for k in one), "no projector buckets were written"
    for key in one:
        assert one[key] == three[key], key

    got = await read_states(live.redis, f"{live.ns}one:", ids)
    for exp in ids:
        assert (got[exp].arms, got[exp].version, got[exp].duplicates) == (
            want[exp].arms,
            want[exp].version,
            want[exp].duplicates,
        ), exp

"""Fault injection: a second reward consumer joins the group mid-stream and leaves again."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.fixtures.faults import wait_until
from tests.fixtures.streams import (
    LiveNamespace,
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

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("drop_namespace")]

N_RECORDS = 60_000


def assigned_partitions(log: Path) -> int:
    """Partitions the consumer logging to ``log`` was last assigned (0 before any)."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if '"msg":"partitions assigned"' in line:
            count = len(json.loads(line)["partitions"])
    return count


def final_stats(log: Path) -> dict[str, object]:
    """The running totals the consumer logging to ``log`` printed when it stopped."""
    stats: dict[str, object] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"msg":"reward consumer stopped"' in line:
            stats = json.loads(line)
    return stats


async def applied_events(redis: Redis, ns: str, ids: list[str]) -> int:
    return sum(s.version for s in (await read_states(redis, ns, ids)).values())


@pytest.mark.timeout(400)
@pytest.mark.parametrize("leave", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_consumer_joins_and_leaves_mid_stream(
    live: LiveNamespace,
    leave: signal.Signals,
    tmp_path: Path,
) -> None:
    """Scenario: 60,000 records (decisions; minimal, joined, retried and doubly rewarded
    rewards) of 12 experiments over all 6 partitions stream in over several seconds.
    One consumer process folds them; once a tenth is applied a second process joins
    the group (a rebalance hands it part of the partitions), and after it has folded
    for a while it leaves, by SIGTERM (clean leave, another rebalance) or by SIGKILL
    (the group notices after the session timeout), while records keep arriving.
    We expect: the second consumer really owned partitions, SIGTERM exits 0, the first
    consumer ends with the group's committed offsets at the end of the log, and every
    snapshot equals the pure fold of every record exactly once (nothing lost or doubled),
    with most of the first consumer's batches folded from its snapshot cache."""
    ids = spread_ids("rb-", per_partition=2, partitions=live.topics[live.names.rewards])
    configs = configs_for(ids)
    await write_configs(live.redis, live.ns, configs.values())
    group = f"{live.ns}rebalance"
    env = live.env(
        LOG_LEVEL="INFO",  # the partition assignments and the final stats are read from it
        MAB_CONSUMER_GROUP_ID=group,
        MAB_MAX_BATCH_RECORDS="500",  # many write/commit cycles for a rebalance to cut
        MAB_POLL_TIMEOUT_MS="100",
        MAB_SESSION_TIMEOUT_MS="6000",  # the broker's minimum: a SIGKILL costs 6 s
    )
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start_processor("services.reward_consumer", env, logs[0])
    second: subprocess.Popen[bytes] | None = None
    producing = asyncio.create_task(
        produce(live.kafka_bootstrap, workload(live.names, ids, N_RECORDS), chunk=1000, pause_s=0.4)
    )
    try:
        await wait_until(
            lambda: _at_least(live.redis, live.ns, ids, N_RECORDS // 10), 120, "a tenth applied"
        )
        second = start_processor("services.reward_consumer", env, logs[1])

        async def second_assigned() -> bool:
            return assigned_partitions(logs[1]) > 0

        await wait_until(second_assigned, 60, "second consumer assigned partitions")
        before = await applied_events(live.redis, live.ns, ids)
        await wait_until(
            lambda: _at_least(live.redis, live.ns, ids, before + N_RECORDS // 10),
            120,
            "progress with two members",
        )
        assert not producing.done(), "the stream ended before the second consumer left"
        second.send_signal(leave)
        code = second.wait(timeout=30)
        if leave == signal.SIGTERM:
            assert code == 0, logs[1].read_text()[-3000:]
        sent = await producing
        await wait_caught_up(
            live.kafka_bootstrap,
            group,
            [live.names.rewards, live.names.decisions],
            within=180,
            procs=[first],
            log=logs[0],
        )
    finally:
        producing.cancel()
        for proc in (second, first):
            if proc is not None and proc.poll() is None:
                stop_processor(proc)
    assert first.returncode == 0, logs[0].read_text()[-3000:]
    # The first consumer folded most batches from its snapshot cache (no read), across
    # both rebalances; the retried and doubly rewarded records made some writes refused.
    stats = final_stats(logs[0])
    assert int(str(stats.get("cache_hits", 0))) > 0, stats
    assert int(str(stats.get("cache_misses", 0))) > 0, stats

    want = expected_states(sent, configs, live.names)
    got = await read_states(live.redis, live.ns, ids)
    for exp in ids:
        assert (got[exp].arms, got[exp].version, got[exp].duplicates) == (
            want[exp].arms,
            want[exp].version,
            want[exp].duplicates,
        ), exp


async def _at_least(redis: Redis, ns: str, ids: list[str], n: int) -> bool:
    return await applied_events(redis, ns, ids) >= n

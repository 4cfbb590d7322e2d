"""``examples/bulk_reward_producer.py`` as a process against the real broker."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import orjson
import pytest

from bandit_core.state import ExperimentState
from schemas.dead_letter import dedupe
from schemas.redis_keys import RedisKeys
from services.reward_consumer.consumer import RewardConsumer
from stream_runtime.dead_letter import read_dead_letters
from tests.fixtures.in_process import consumer_settings
from tests.fixtures.streams import LiveNamespace, put_config

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bulk_reward_producer.py"


async def run_example(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_example_producer_output_is_folded_once_and_bad_lines_dead_lettered(
    live: LiveNamespace,
    tmp_path: Path,
) -> None:
    """Scenario: the example producer sends 300 demo rewards, is re-run with the same run
    name (a retried export), then sends a file with one good and one bad reward.
    We expect: 301 rewards applied, the 300 re-sent ones as duplicates, the bad one in
    the DLQ with reason unknown_arm."""
    await put_config(live.redis, live.ns, "ex", ("blue", "green"))
    common = ["--bootstrap", live.kafka_bootstrap, "--topic", live.names.rewards]
    for _ in range(2):
        out = await run_example(*common, "--demo", "ex", "--arms", "blue,green", "--count", "300")
        assert "300 rewards acknowledged" in out
    lines = tmp_path / "rewards.jsonl"
    lines.write_bytes(
        orjson.dumps({"experiment_id": "ex", "arm_id": "blue", "reward": 1, "event_id": "o-1"})
        + b"\n"
        + orjson.dumps({"experiment_id": "ex", "arm_id": "purple", "reward": 1})
        + b"\n"
    )
    assert "2 rewards acknowledged" in await run_example(*common, "--file", str(lines))

    consumer = RewardConsumer(
        consumer_settings(live.kafka_bootstrap, live.redis_url, live.ns, live.ns + "ex")
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while consumer.stats.records < 602:
            assert time.monotonic() < deadline, consumer.stats
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
    assert consumer.stats.applied == 301
    assert consumer.stats.duplicates == 300
    raw = await live.redis.get(RedisKeys(live.ns).experiment("ex").snapshot)
    state = ExperimentState.from_snapshot(raw, "ex")
    assert sum(a.pulls for a in state.arms.values()) == 301
    letters = dedupe(await read_dead_letters(live.kafka_bootstrap, live.names.rewards_dlq))
    assert [(d.reason, d.key) for d in letters] == [("unknown_arm", b"ex")]

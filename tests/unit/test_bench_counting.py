"""The benchmark harness counts what a user would count: each projected reward once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping

import httpx
import pytest

from bench.decision_cost import per_request_us, unit_queries
from bench.decode_cost import (
    DECODERS,
    decision_records,
    decoded_events,
    per_record_us,
    reward_records,
    time_decode,
)
from bench.evaluation_latency import EvaluationLoop
from bench.fold_rows import projected_rewards
from bench.harness import cpu_s, median_of, tree_cpu_s
from schemas.events import RewardObserved
from schemas.redis_keys import BucketKind, RedisKeys
from services.projector.projection import Retention, project
from stream_runtime.batch import decode_batch
from tests.fixtures.events import config_of

pytestmark = pytest.mark.unit

H0 = 1_800_000_000 - 1_800_000_000 % 3600
CFG = config_of("e", ("a", "b"), ts=0)


Buckets = dict[str, Mapping[bytes, bytes]]


def bucket_hashes(n_rewards: int) -> Buckets:
    """The Redis hashes the projector would hold after ``n_rewards`` rewards spread over
    three hours: key -> {field: value}, both families."""
    rewards = [
        RewardObserved(experiment_id="e", arm_id="ab"[i % 2], reward=1.0, ts=H0 + i * 97.0)
        for i in range(n_rewards)
    ]
    proj = project(rewards, CFG, set(), Retention(hour_s=10**9, minute_s=10**9), now=H0)
    keys = RedisKeys("bench-").experiment("e")
    hashes: Buckets = {}
    for (kind, start), fields in proj.buckets.items():
        hashes[keys.bucket(kind, start)] = {f.encode(): str(v).encode() for f, v in fields.items()}
    return hashes


def matching(hashes: Buckets, kind: BucketKind) -> list[Mapping[bytes, bytes]]:
    pattern = RedisKeys("bench-").experiment("e").bucket_pattern(kind)
    assert pattern.endswith("*")
    assert "*" not in pattern[:-1]
    return [v for k, v in hashes.items() if k.startswith(pattern[:-1])]


def test_each_reward_is_counted_once() -> None:
    hashes = bucket_hashes(250)
    assert len(matching(hashes, "hour")) == 7  # 250 * 97 s spans seven hours
    assert projected_rewards(matching(hashes, "hour")) == 250
    # The minute family holds the same rewards again: summing every bucket (what the
    # harness once did) doubles the figure.
    assert projected_rewards(matching(hashes, "minute")) == 250
    assert projected_rewards(hashes.values()) == 500


def test_decisions_and_sums_are_not_rewards() -> None:
    assert (
        projected_rewards([{b"a|d": b"40", b"a|s": b"7000000", b"a|r": b"7", b"b|r": b"3"}]) == 10
    )


def test_the_evaluation_loop_counts_only_completed_evaluations() -> None:
    """The busy row's evaluation count is what answered 200; a 429 (one at a time) or
    an error is listed apart, never counted as an evaluation that ran."""
    answers = iter([200, 429, 429, 200, 503] + [429] * 10_000)

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.params["strategy"] == "ucb1"
        return httpx.Response(next(answers), json={})

    with EvaluationLoop("http://decider", httpx.MockTransport(answer)) as loop:
        while len(loop.calls) < 5:
            time.sleep(0.001)
    assert len(loop.completed()) == 2
    assert loop.refused()[503] == 1
    assert loop.refused()[429] >= 2


def test_the_decider_cpu_counts_its_worker_processes() -> None:
    """granian serves from a child process: CPU read from the parent alone would be ~0."""
    burn = (
        "import time\nend = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\ntime.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and cpu_s(child.pid) < 0.4:
            time.sleep(0.05)
        own = cpu_s(os.getpid())
        assert tree_cpu_s(os.getpid()) - own >= 0.35
    finally:
        child.kill()
        child.wait()


def test_the_median_keeps_the_cpu_per_request_only_when_measured() -> None:
    run = {"rps": 10, "p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0, "requests": 5, "errors": 0}
    assert "cpu_us_per_request" not in median_of([run])
    timed = [dict(run, cpu_us_per_request=v) for v in (30.0, 50.0, 40.0)]
    assert median_of(timed)["cpu_us_per_request"] == 40.0


def test_unit_queries_mix_new_and_returning_units_at_the_share() -> None:
    queries = unit_queries("e", 20_000, 0.25, seed=3)
    units = [q.decode().split("unit_id=")[1] for q in queries]
    first_seen: set[str] = set()
    new = 0
    for unit in units:
        if unit not in first_seen:
            first_seen.add(unit)
            new += 1
    assert queries[0] == b"experiment_id=e&unit_id=v3-1"
    assert 0.23 < new / len(units) < 0.27  # about the share; every other one returns
    assert unit_queries("e", 100, 0.0, seed=3) == [b"experiment_id=e&unit_id=v3-1"] * 100


def test_decision_cost_is_cpu_per_request_and_refuses_an_empty_round() -> None:
    assert per_request_us(0.3, 15_000) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        per_request_us(0.3, 0)


def test_decode_cost_times_every_record_and_refuses_a_reject() -> None:
    """Each round decodes every record into an event (rewards and decisions alike); a
    record that is rejected fails the run instead of being timed as decoded."""
    records = [*reward_records(30), *decision_records(30)]
    rounds = time_decode(records, 2)
    assert len(rounds) == 2
    assert all(us >= 0 for us in rounds)
    assert per_record_us(0.5, 100_000) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        per_record_us(0.5, 0)
    bad = records[0]._replace(value=b"{not json")
    with pytest.raises(RuntimeError, match="1 rejected"):
        time_decode([bad, *records[1:]], 1)

    assert decoded_events(decode_batch(records, DECODERS)) == 60

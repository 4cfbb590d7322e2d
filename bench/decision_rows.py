"""The decider rows of the benchmark: ``GET /decision`` by arm count, with unit ids, on a
continuous experiment, and ``POST /reward``, each a median of wrk runs on a decider
process, its events counted on the topics.

Kept apart from :mod:`bench.run`, which starts the stack, runs these with the consumer
and replay rows, and writes the table.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.fold_rows import fold_into
from bench.harness import (
    REPORT_LUA,
    UNITS_LUA,
    http_server,
    median_of,
    rss_mb,
    topic_count,
    tree_cpu_s,
    wrk,
)
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames

#: The unit rows (``GET /decision`` with ``unit_id``, 2 arms, one worker): the share of
#: requests that come from a new unit (first request: assigned, stored, logged); the
#: others come from units the run already sent (sticky: answered from memory, nothing
#: logged). A storefront asks for a decision on every page view that shows the
#: experiment, so a visitor who sees four such pages makes one new-unit request in
#: four; returning visitors of earlier days make the real share lower still, so 0.25
#: errs towards the expensive side. Fixed by ``bench/wrk/units.lua`` whatever the run's
#: length (a uniform draw from a fixed population made a 3 s run ~90% new units).
UNIT_NEW_SHARE = 0.25
#: Goals of the unit rows against the unkeyed 2-arm row of the same run: sticky keeps at
#: least this share of its throughput (and p99 at most ``UNIT_P99_MS``), consistent is
#: within ``CONSISTENT_SLACK`` of it.
STICKY_THROUGHPUT_SHARE = 0.70
CONSISTENT_SLACK = 0.10
UNIT_P99_MS = 10.0
#: Row label -> (assignment mode, share of requests from new units).
UNIT_ROWS = {
    "sticky units": ("sticky", UNIT_NEW_SHARE),
    "sticky units, all new": ("sticky", 1.0),
    "consistent units": ("consistent", UNIT_NEW_SHARE),
}


async def count_unit_keys(redis_url: str, prefix: str, experiment_id: str) -> int:
    """Sticky assignments stored for ``experiment_id`` (one key per unit)."""
    redis = Redis.from_url(redis_url)
    try:
        pattern = RedisKeys(prefix).unit_pattern(experiment_id)
        return sum([1 async for _ in redis.scan_iter(match=pattern, count=10_000)])
    finally:
        await redis.aclose()


def unit_rows(
    bootstrap: str,
    env: dict[str, str],
    topics: TopicNames,
    base: str,
    measure: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """``GET /decision`` with unit ids (2 arms, sticky and consistent), counted: a
    consistent decision logs one ``DecisionMade`` per request; a sticky one only for a
    new unit, so the events logged must equal the unit keys the run stored. Every wrk run
    has a seed of its own, so the new units of a run (repeats included) are new to the
    server too."""
    results: dict[str, Any] = {}
    seeds = iter(range(1, 1_000_000))
    created: set[str] = set()
    for label, (mode, new_share) in UNIT_ROWS.items():
        exp = f"bench-2-{mode}"
        if exp not in created:
            created.add(exp)
            r = httpx.post(
                f"{base}/experiments",
                json={
                    "experiment_id": exp,
                    "arm_ids": ["arm-0", "arm-1"],
                    "strategy": "thompson",
                    "assignment": mode,
                },
                timeout=10,
            )
            r.raise_for_status()
        url = f"{base}/decision?experiment_id={exp}"

        def units(_repeat: int, share: float = new_share) -> list[str]:
            return ["UNITS", str(share), str(next(seeds))]

        wrk(url, 2, method=units(0), script=UNITS_LUA)
        time.sleep(1.0)
        keys_before = asyncio.run(count_unit_keys(env["REDIS_URL"], env["MAB_REDIS_PREFIX"], exp))
        before = topic_count(bootstrap, topics.decisions)
        res = measure(url, units, UNITS_LUA)
        time.sleep(1.0)  # linger + flush
        logged = topic_count(bootstrap, topics.decisions) - before
        keys = asyncio.run(count_unit_keys(env["REDIS_URL"], env["MAB_REDIS_PREFIX"], exp))
        answered = res["requests"] - res["errors"]
        res["decision_events_logged"] = logged
        if mode == "sticky":
            res["new_units"] = keys - keys_before
            res["new_unit_share"] = round((keys - keys_before) / max(1, answered), 3)
            res["decision_events_missing"] = keys - keys_before - logged
        else:
            res["decision_events_missing"] = answered - logged
        results[f"GET /decision, 2 arms, {label}"] = res
    return results


#: The continuous row's experiment (2 arms, one worker) and its goal: at least this share
#: of the unkeyed 2-arm (binary Thompson) row's throughput in the same run.
CONTINUOUS_BODY: dict[str, Any] = {"reward_type": "continuous", "strategy": "revenue_thompson"}
CONTINUOUS_THROUGHPUT_SHARE = 0.8
CONTINUOUS_ROW = "GET /decision, 2 arms, continuous (revenue_thompson)"

#: Arm counts of the ``GET /decision`` rows (one worker; N workers: 2 arms only).
DECISION_ARMS = (2, 10, 100, 1000)
#: Rewards folded into the 1,000-arm experiment before it is measured (20 per arm), so
#: its posteriors differ: a fresh experiment's identical posteriors take shortcuts.
CATALOGUE_REWARDS = 20_000
#: The goal of the 1,000-arm row: its p99 at most this many times the 2-arm p99.
CATALOGUE_P99_RATIO = 3.0


def counted_per_answer(
    run: Callable[[], dict[str, Any]], logged: Callable[[], int]
) -> dict[str, Any]:
    """``run()`` (a row's wrk runs) with the ``DecisionMade`` records it logged,
    ``logged()`` being the decisions topic's record count: every answered request must
    have logged one, so ``decision_events_missing`` is 0 when nothing was lost (the count
    is read after the producer's linger and flush)."""
    before = logged()
    res = run()
    time.sleep(1.0)  # linger + flush
    n = logged() - before
    res["decision_events_logged"] = n
    res["decision_events_missing"] = res["requests"] - res["errors"] - n
    return res


def continuous_row(
    bootstrap: str,
    topics: TopicNames,
    base: str,
    measure: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """``GET /decision`` on a continuous experiment (the revenue sampler, 2 arms, no
    units), counted like the unkeyed rows: one ``DecisionMade`` per 200."""
    exp = "bench-2-continuous"
    body = {"experiment_id": exp, "arm_ids": ["arm-0", "arm-1"], **CONTINUOUS_BODY}
    httpx.post(f"{base}/experiments", json=body, timeout=10).raise_for_status()
    url = f"{base}/decision?experiment_id={exp}"
    wrk(url, 2)
    time.sleep(1.0)
    return counted_per_answer(
        lambda: measure(url), lambda: topic_count(bootstrap, topics.decisions)
    )


def decision_rows(
    bootstrap: str,
    env: dict[str, str],
    topics: TopicNames,
    logdir: Path,
    workers: int,
    duration: int,
    repeats: int,
) -> dict[str, Any]:
    """``GET /decision`` for :data:`DECISION_ARMS` (Thompson, one worker; N workers: 2
    arms), ``POST /reward``, the decider's RSS, and the 1,000-arm p99 next to the 2-arm
    p99 of the same run. After each decision row the decisions topic is counted: every
    200 must have produced exactly one ``DecisionMade`` record."""
    results: dict[str, Any] = {}

    def measure(
        url: str,
        pid: int,
        method: list[str] | Callable[[int], list[str]] | None = None,
        script: Path = REPORT_LUA,
    ) -> dict[str, Any]:
        """Median of ``repeats`` wrk runs; ``method`` may give each run its own args."""
        runs = []
        for i in range(repeats):
            before = tree_cpu_s(pid)
            args = method(i) if callable(method) else method
            run = wrk(url, duration, method=args, script=script)
            served = run["requests"] - run["errors"]
            run["cpu_us_per_request"] = round((tree_cpu_s(pid) - before) / max(1, served) * 1e6, 1)
            runs.append(run)
        return median_of(runs)

    for n_workers in sorted({1, workers}):
        with http_server(
            f"decider-w{n_workers}", "services.decider.app:app", env, logdir, workers=n_workers
        ) as (proc, base):
            rest = rss_mb(proc.popen.pid)
            rows = [a for a in DECISION_ARMS if n_workers == 1 or a == 2]
            # Every experiment first: the consumer folding the catalogue's rewards then
            # reads nothing else (the rows below fill the decisions topic).
            for arms in rows:
                exp = f"bench-{arms}-w{n_workers}"
                arm_ids = [f"arm-{i}" for i in range(arms)]
                r = httpx.post(
                    f"{base}/experiments",
                    json={"experiment_id": exp, "arm_ids": arm_ids, "strategy": "thompson"},
                    timeout=10,
                )
                r.raise_for_status()
                if arms >= 1000:
                    fold_into(exp, arm_ids, env, logdir, CATALOGUE_REWARDS)
            for arms in rows:
                url = f"{base}/decision?experiment_id=bench-{arms}-w{n_workers}"
                # Warm-up, outside the count. A fresh server keeps speeding up for its
                # first ~20 s of load (measured: 11.7k -> 14.8k req/s for the same 2-arm
                # experiment, first vs third run), so the first experiment of each
                # server warms longer: the rows compare steady states, not start-up.
                wrk(url, 12 if arms == 2 else 2)
                time.sleep(1.0)
                results[f"GET /decision, {arms} arms, {n_workers} worker(s)"] = counted_per_answer(
                    functools.partial(measure, url, proc.popen.pid),
                    lambda: topic_count(bootstrap, topics.decisions),
                )
            if n_workers == 1:
                results.update(
                    unit_rows(
                        bootstrap,
                        env,
                        topics,
                        base,
                        lambda url, method, script: measure(url, proc.popen.pid, method, script),
                    )
                )
                results[CONTINUOUS_ROW] = continuous_row(
                    bootstrap, topics, base, lambda url: measure(url, proc.popen.pid)
                )
                two = results["GET /decision, 2 arms, 1 worker(s)"]["p99_ms"]
                many = results[f"GET /decision, {DECISION_ARMS[-1]} arms, 1 worker(s)"]["p99_ms"]
                results["decision p99, 1000 vs 2 arms"] = {
                    "ratio": round(many / two, 2),
                    "goal": CATALOGUE_P99_RATIO,
                }
            exp = f"bench-2-w{n_workers}"
            body = json.dumps({"experiment_id": exp, "arm_id": "arm-0", "reward": 1.0})
            before = topic_count(bootstrap, topics.rewards)
            res = measure(f"{base}/reward", proc.popen.pid, ["POST", body])
            res["reward_events_logged"] = topic_count(bootstrap, topics.rewards) - before
            results[f"POST /reward, {n_workers} worker(s)"] = res
            results[f"decider RSS MiB, {n_workers} worker(s)"] = {
                "rest": rest,
                "after_load": rss_mb(proc.popen.pid),
            }
    return results

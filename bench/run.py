"""The benchmark harness: one command starts what it needs, measures, and writes the table.

``python -m bench.run [--duration S] [--quick]`` (or ``make bench``) starts a throwaway
Kafka + Redis, the decider and the consumers as real processes, and measures in one run
(``--only fold [--kafka-bootstrap H:P --redis-url URL]``: only the consumer fold rows,
optionally on a running Kafka + Redis under a fresh prefix; ``--only decisions``: only
the decider rows):

* ``GET /decision`` for 2, 10, 100 and 1,000 arms (Thompson; the 1,000-arm experiment
  with 20,000 rewards folded first, and its p99 over the 2-arm p99 of the same run), one
  worker and N workers, with wrk (``-t1 -c32``), next to two ceilings measured in the
  same run on the same server flags: a constant FastAPI route and a raw ASGI app. After
  each run the decisions topic is counted: every 200 must have produced exactly one
  ``DecisionMade`` record.
* ``GET /decision`` with unit ids (2 arms, one worker): a sticky and a consistent
  experiment, ids sent by ``bench/wrk/units.lua`` as a storefront sends them, a quarter
  of the requests from new units and the rest from returning ones, plus a sticky row
  where every request is a new unit (the worst case: a campaign's first-time visitors);
  a consistent run must log one event per 200, a sticky run one per unit key it stored
  (returning units log none), and each sticky row reports the new-unit share it saw.
  Goals against the unkeyed 2-arm row: sticky ≥ 70% of its throughput with p99 ≤ 10 ms,
  consistent within 10%.
* ``GET /decision`` on a continuous experiment (the revenue sampler, 2 arms, one
  worker), read against the unkeyed 2-arm binary Thompson row of the same run (goal: at
  least 80% of its throughput), counted like it.
* ``POST /reward`` (acknowledged by Kafka before the answer).
* the reward consumer's fold rate from a pre-filled topic, and the projector's when it
  exists; RSS of each process at rest and after load.
* ``mab replay``'s rate: ``--replay-records`` events (half decisions, half joined
  rewards) replayed into snapshots and hour/minute buckets (:mod:`bench.replay_rate`).

The machine is small and noisy, so every figure is a median of ``--repeats`` runs and is
reported with its ratio to the ceiling measured minutes earlier, never as an absolute
promise. Results go to ``bench/results/<date>.json`` and between the markers of the
"Service" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from typing import Any

from bench import replay_rate
from bench.decision_rows import (
    CATALOGUE_REWARDS,
    CONSISTENT_SLACK,
    CONTINUOUS_ROW,
    CONTINUOUS_THROUGHPUT_SHARE,
    STICKY_THROUGHPUT_SHARE,
    UNIT_P99_MS,
    decision_rows,
)
from bench.evaluation_latency import BUSY_ROW, evaluation_rows
from bench.fold_rows import fold_rows, run_folds
from bench.harness import (
    RESULTS,
    ROOT,
    bench_stack,
    header,
    http_server,
    median_of,
    stream_env,
    wrk,
)
from deploy.stack.topics import create_topics
from schemas.topics import topic_specs

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- service-bench:start -->", "<!-- service-bench:end -->"


def run_decisions(duration: int, repeats: int, workers: int) -> dict[str, Any]:
    """Only the decider rows (``--only decisions``) on a throwaway stack: the 1,000-arm
    p99 next to the 2-arm p99 without the ceilings, folds and replay around them."""
    results = header(f"wrk -t1 -c32 -d{duration}s, median of {repeats}; decider rows only")
    with bench_stack() as (stack, env, topics, logdir):
        results.update(
            decision_rows(stack.bootstrap, env, topics, logdir, workers, duration, repeats)
        )
    return results


def run(
    duration: int, repeats: int, fold_records: int, workers: int, replay_records: int = 0
) -> dict[str, Any]:
    results = header(f"wrk -t1 -c32 -d{duration}s, median of {repeats}")
    with bench_stack() as (stack, env, topics, logdir):

        def measure(url: str, method: list[str] | None = None, warm: bool = True) -> dict[str, Any]:
            if warm:
                wrk(url, 2, method=method)  # warm caches and connections, not measured
            return median_of([wrk(url, duration, method=method) for _ in range(repeats)])

        for label, target in [
            ("raw ASGI", "bench.baselines:raw_app"),
            ("FastAPI constant route", "bench.baselines:fastapi_app"),
        ]:
            with http_server(label.split()[0].lower(), target, env, logdir) as (_, base):
                results[label] = measure(f"{base}/decision")

        results.update(
            decision_rows(stack.bootstrap, env, topics, logdir, workers, duration, repeats)
        )
        # A namespace of its own: the evaluation reads whole partitions, and the rows
        # above left millions of records in this one (beyond the endpoint's bound).
        eval_prefix = f"bench{uuid.uuid4().hex[:6]}-"
        create_topics(stack.bootstrap, topic_specs(eval_prefix))
        eval_env = stream_env(stack.bootstrap, stack.redis_url, eval_prefix)
        results.update(evaluation_rows(eval_env, logdir, duration, repeats, fill_s=duration))
        # The same decider under uvicorn: what the server choice is worth, same run.
        with http_server(
            "decider-uvicorn", "services.decider.app:app", env, logdir, server="uvicorn"
        ) as (_, base):
            url = f"{base}/decision?experiment_id=bench-2-w1"
            wrk(url, 2)
            results["GET /decision, 2 arms, 1 worker, uvicorn"] = measure(url, warm=False)

        # Fold rates: pre-fill the rewards topic, then time a fresh consumer to catch up.
        # A namespace of their own: the decider rows above left ~600,000 decisions and
        # rewards in this one, which a fresh consumer would fold too (uncounted).
        fold_prefix = f"bench{uuid.uuid4().hex[:6]}-"
        create_topics(stack.bootstrap, topic_specs(fold_prefix))
        fold_env = stream_env(stack.bootstrap, stack.redis_url, fold_prefix)
        results.update(fold_rows(stack.bootstrap, stack.redis_url, fold_records, fold_env, logdir))
        if replay_records:
            results["replay"] = replay_rate.measure(
                stack.bootstrap, stack.redis_url, replay_records, workers=2
            )
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Measured {results['date']} on {results['machine']}; {results['wrk']}.", ""]
    ceiling = results.get("raw ASGI", {}).get("rps")
    lines += [
        "| What | req/s | p50 ms | p99 ms | p99.9 ms | errors | vs raw ASGI "
        "| decider CPU µs per request | events |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if isinstance(r, dict) and "rps" in r:
            ratio = f"{r['rps'] / ceiling:.2f}" if ceiling else "-"
            events = ""
            if "decision_events_logged" in r:
                events = f"{r['decision_events_logged']} logged / {r['requests']} answered"
                if "new_units" in r:
                    events += f" ({r['new_units']} new units, {r['new_unit_share']:.0%})"
            if "reward_events_logged" in r:
                events = f"{r['reward_events_logged']} logged / {r['requests']} answered"
            lines.append(
                f"| {name} | {r['rps']:,} | {r['p50_ms']} | {r['p99_ms']} | "
                f"{r['p999_ms']} | {r['errors']} | {ratio} | "
                f"{r.get('cpu_us_per_request', '-')} | {events} |"
            )
    lines += [
        "",
        "| Consumer | records | seconds | records/s | records/s once folding "
        "| CPU µs per record | RSS MiB start → loaded |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if isinstance(r, dict) and "records_per_s" in r and name != "replay":
            folding = r.get("folding_records_per_s")
            lines.append(
                f"| {name} | {r['records']:,} | {r['seconds']} | "
                f"{r['records_per_s']:,} | {'-' if folding is None else f'{folding:,}'} | "
                f"{r.get('cpu_us_per_record', '-')} | "
                f"{r.get('rss_mb_start', '-')} → {r.get('rss_mb_loaded', '-')} |"
            )
    replay = results.get("replay")
    if isinstance(replay, dict):
        p = replay["profile_s"]
        lines += [
            "",
            "| Replay (`mab replay`) | records | workers | seconds | records/s "
            "| read · decode · fold · project · write (s, summed over workers) |",
            "|---|---|---|---|---|---|",
            f"| decisions + joined rewards → snapshots + hour/minute buckets "
            f"| {replay['records']:,} | {replay['workers']} | {replay['seconds']} "
            f"| {replay['records_per_s']:,} | {p['read']} · {p['decode']} · {p['fold']} "
            f"· {p['project']} · {p['write']} |",
        ]
    unkeyed = results.get("GET /decision, 2 arms, 1 worker(s)")
    sticky = results.get("GET /decision, 2 arms, sticky units")
    worst = results.get("GET /decision, 2 arms, sticky units, all new")
    consistent = results.get("GET /decision, 2 arms, consistent units")
    if (
        isinstance(unkeyed, dict)
        and isinstance(sticky, dict)
        and isinstance(worst, dict)
        and isinstance(consistent, dict)
    ):
        lines += [
            "",
            f"Units ({sticky.get('new_unit_share', 0):.0%} of the sticky row's requests were "
            f"new units, the rest returning ones): sticky {sticky['rps'] / unkeyed['rps']:.2f} "
            f"of the unkeyed 2-arm "
            f"throughput (goal ≥ {STICKY_THROUGHPUT_SHARE}), p99 {sticky['p99_ms']} ms (goal "
            f"≤ {UNIT_P99_MS} ms at 32 connections); every request a new unit: "
            f"{worst['rps'] / unkeyed['rps']:.2f}, p99 {worst['p99_ms']} ms; consistent "
            f"{consistent['rps'] / unkeyed['rps']:.2f} (goal ≥ {1 - CONSISTENT_SLACK}).",
        ]
    continuous = results.get(CONTINUOUS_ROW)
    if isinstance(unkeyed, dict) and isinstance(continuous, dict):
        lines += [
            "",
            f"Continuous decisions (revenue_thompson): {continuous['rps'] / unkeyed['rps']:.2f} "
            f"of the unkeyed 2-arm binary Thompson throughput of the same run (goal ≥ "
            f"{CONTINUOUS_THROUGHPUT_SHARE}), p99 {continuous['p99_ms']} ms.",
        ]
    catalogue = results.get("decision p99, 1000 vs 2 arms")
    if isinstance(catalogue, dict):
        lines.append(
            f"\nGET /decision p99, 1,000 arms ({CATALOGUE_REWARDS:,} rewards folded) over 2 "
            f"arms, same run: {catalogue['ratio']} (goal: at most {catalogue['goal']:g})."
        )
    busy = results.get(BUSY_ROW)
    if isinstance(busy, dict):
        lines.append(
            f"\n{BUSY_ROW}: {busy['evaluations']} off-policy evaluations completed during "
            f"the runs (median {busy['evaluation_s_median']} s each; refused: "
            f"{busy['evaluations_refused'] or 'none'})."
        )
    for name, r in results.items():
        if name.startswith("decider RSS"):
            lines.append(f"\n{name}: {r['rest']} at rest, {r['after_load']} after load.")
    return "\n".join(lines) + "\n"


def write_doc(table: str, command: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{START}\nCommand: `{command}`\n\n{table}{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Service\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per figure (median)")
    parser.add_argument("--fold-records", type=int, default=200_000)
    parser.add_argument("--replay-records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 repeat, 20k records")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--only",
        choices=["fold", "decisions"],
        help="only the consumer fold rows, or only the decider rows (neither rewrites "
        "docs/benchmarks.md)",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        help="with --only fold: a running Kafka to use (a fresh topic prefix on it)",
    )
    parser.add_argument(
        "--redis-url", help="with --only fold: a running Redis (a fresh key prefix, deleted after)"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.fold_records = 3, 1, 20_000
        args.replay_records = 20_000
    if args.only == "fold":
        results = run_folds(args.fold_records, args.kafka_bootstrap, args.redis_url)
        args.no_doc = True
    elif args.only == "decisions":
        if shutil.which("wrk") is None:
            sys.exit("wrk is missing: run `make system-deps` (Debian package wrk)")
        results = run_decisions(args.duration, args.repeats, args.workers)
        args.no_doc = True
    else:
        if shutil.which("wrk") is None:
            sys.exit("wrk is missing: run `make system-deps` (Debian package wrk)")
        results = run(
            args.duration, args.repeats, args.fold_records, args.workers, args.replay_records
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{results['date'][:19].replace(':', '')}.json"
    out.write_text(json.dumps(results, indent=2))
    table = markdown(results)
    print(table)
    if not args.no_doc:
        write_doc(table, "make bench  # python -m bench.run " + " ".join(sys.argv[1:]))
    print(f"raw results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

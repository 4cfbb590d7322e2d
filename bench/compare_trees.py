"""``GET /decision`` of several checkouts of the project, alternated on one stack.

Comparing a change on this shared machine with two ``make bench`` runs one after the
other is unreliable: runs spread by about ±10% and whichever runs second may be lucky or
not. This runs the decider of each checkout (its own ``.venv``, started from its own
folder, on the same Kafka and Redis) in turn, round after round, and reports per tree the
medians of req/s, p99 and the decider's CPU µs per decision (read from ``/proc`` over the
server's process tree: steadier than req/s when something else runs).

    python -m bench.compare_trees /tmp/before . --rounds 4 --duration 8

Each checkout needs ``make venv`` first (``git worktree add /tmp/before <rev>``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import bench_stack, server_argv, tree_cpu_s, wrk
from deploy.stack.ports import free_port

#: Seconds of load before each measured run: a fresh server keeps speeding up for a while.
WARM_UP_S = 10


def measure_tree(
    tree: Path, env: dict[str, str], logdir: Path, label: str, duration: int
) -> dict[str, Any]:
    """Start the decider of ``tree``, create a 2-arm experiment, warm up, measure once."""
    port = free_port()
    argv = server_argv("granian", "services.decider.app:app", port, 1)
    argv[0] = str(tree / ".venv" / "bin" / "python")
    with (logdir / f"{label}.log").open("wb") as out:
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the decider of {tree} did not start; see {label}.log")
            time.sleep(0.1)
        body = {"experiment_id": label, "arm_ids": ["a", "b"], "strategy": "thompson"}
        httpx.post(f"{base}/experiments", json=body, timeout=10).raise_for_status()
        url = f"{base}/decision?experiment_id={label}"
        wrk(url, WARM_UP_S)
        time.sleep(1.0)
        before = tree_cpu_s(proc.pid)
        run = wrk(url, duration)
        served = run["requests"] - run["errors"]
        run["cpu_us_per_request"] = round((tree_cpu_s(proc.pid) - before) / max(1, served) * 1e6, 2)
        return run
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts with a .venv")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    args = parser.parse_args()
    trees: list[Path] = [t.resolve() for t in args.trees]
    runs: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
    with bench_stack() as (_stack, env, _topics, logdir):
        for round_no in range(args.rounds):
            for index, tree in enumerate(trees):
                run = measure_tree(tree, env, logdir, f"tree{index}-r{round_no}", args.duration)
                runs[tree].append(run)
                print(
                    f"round {round_no} {tree}: {run['rps']:,} req/s, p99 {run['p99_ms']} ms, "
                    f"{run['cpu_us_per_request']} CPU µs per decision",
                    flush=True,
                )
    print("\n| Tree | req/s (median) | p99 ms | decider CPU µs per decision |\n|---|---|---|---|")
    for tree, results in runs.items():
        print(
            f"| {tree} | {statistics.median(r['rps'] for r in results):,.0f} | "
            f"{statistics.median(r['p99_ms'] for r in results):.2f} | "
            f"{statistics.median(r['cpu_us_per_request'] for r in results):.1f} |"
        )


if __name__ == "__main__":
    main()

"""Decision latency while off-policy evaluations run, next to the same decider idle.

``python -m bench.evaluation_latency [--duration 10] [--repeats 3]`` (also a pair of rows
of ``make bench``): a throwaway Kafka + Redis, the decider (granian, one worker), one
3-arm Thompson experiment whose decisions log is first filled by ``--fill`` seconds of
``GET /decision``. Then, alternately, ``wrk`` measures ``GET /decision`` alone and while
a client calls ``GET /experiments/{id}/evaluate`` back to back (one at a time: the
endpoint answers 429 to a second one), so both figures come from the same server, log
and minute. An evaluation window without a completed evaluation is an error, never a
row: the figure would claim interference it never measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any, Final

import httpx

from bench.harness import bench_stack, header, http_server, median_of, wrk

EXPERIMENT: Final = "bench-evaluation"
ARMS: Final = ("a", "b", "c")
#: What each evaluation estimates: another strategy on every decision, unrewarded
#: decisions counted as 0 (the log holds decisions only), the endpoint's default bounds.
EVALUATE_PARAMS: Final = {"strategy": "ucb1", "missing_reward": "zero"}
QUIET_ROW: Final = "GET /decision, 3 arms, no evaluation"
BUSY_ROW: Final = "GET /decision, 3 arms, evaluations running"


class EvaluationLoop:
    """Calls the evaluation endpoint back to back in a thread until stopped, keeping
    each call's status and duration."""

    def __init__(self, base: str, transport: httpx.BaseTransport | None = None) -> None:
        self.url = f"{base}/experiments/{EXPERIMENT}/evaluate"
        self.transport = transport
        self.calls: list[tuple[int, float]] = []
        self.first_refusal = ""  # the body of the first answer other than 200
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evaluations", daemon=True)

    def __enter__(self) -> EvaluationLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=300)

    def _run(self) -> None:
        with httpx.Client(timeout=300, transport=self.transport) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                answer = client.get(self.url, params=EVALUATE_PARAMS)
                self.calls.append((answer.status_code, time.perf_counter() - started))
                if answer.status_code != 200 and not self.first_refusal:
                    self.first_refusal = f"{answer.status_code} {answer.text[:500]}"

    def completed(self) -> list[float]:
        """Seconds of each evaluation that answered 200."""
        return [seconds for status, seconds in self.calls if status == 200]

    def refused(self) -> dict[int, int]:
        """Answers other than 200, by status."""
        counts: dict[int, int] = {}
        for status, _ in self.calls:
            if status != 200:
                counts[status] = counts.get(status, 0) + 1
        return counts


def evaluation_rows(
    env: dict[str, str], logdir: Any, duration: int, repeats: int, fill_s: int
) -> dict[str, Any]:
    """The quiet and the busy row (see module docstring), ``repeats`` runs each,
    alternated; the busy row also counts the evaluations that completed during it."""
    with http_server("decider-evaluation", "services.decider.app:app", env, logdir) as (_, base):
        created = httpx.post(
            f"{base}/experiments",
            json={"experiment_id": EXPERIMENT, "arm_ids": list(ARMS), "strategy": "thompson"},
            timeout=10,
        )
        created.raise_for_status()
        url = f"{base}/decision?experiment_id={EXPERIMENT}"
        filled = wrk(url, fill_s)  # the log the evaluations read (and the warm-up)
        time.sleep(1.0)
        quiet: list[dict[str, Any]] = []
        busy: list[dict[str, Any]] = []
        seconds: list[float] = []
        refused: dict[int, int] = {}
        for _ in range(repeats):
            quiet.append(wrk(url, duration))
            with EvaluationLoop(base) as loop:
                busy.append(wrk(url, duration))
            done = loop.completed()
            if not done:
                raise RuntimeError(
                    f"no evaluation completed during a window of {len(loop.calls)} calls; "
                    f"first answer: {loop.first_refusal}"
                )
            seconds += done
            for status, n in loop.refused().items():
                refused[status] = refused.get(status, 0) + n
        busy_row = median_of(busy)
        busy_row["evaluations"] = len(seconds)
        busy_row["evaluation_s_median"] = round(statistics.median(seconds), 2)
        busy_row["evaluations_refused"] = refused
        return {
            QUIET_ROW: {**median_of(quiet), "decisions_in_log": filled["requests"]},
            BUSY_ROW: busy_row,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (median)")
    parser.add_argument("--fill", type=int, default=10, help="seconds of decisions logged first")
    args = parser.parse_args()
    results = header(f"wrk -t1 -c32 -d{args.duration}s, median of {args.repeats}")
    with bench_stack() as (_stack, env, _topics, logdir):
        results.update(evaluation_rows(env, logdir, args.duration, args.repeats, args.fill))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

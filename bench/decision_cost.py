"""CPU cost of one ``GET /decision`` in the decider's handler, by kind of request.

``python -m bench.decision_cost [--requests 15000] [--rounds 4] [--new-share 0.25]``:
the decider's ASGI app (the raw fast path in front of FastAPI) built in this process on
a throwaway Kafka + Redis, 2-arm experiments (:data:`KINDS`: Thompson without an
assignment setting and with ``sticky``, ``consistent`` and ``per_request`` units, and a
continuous experiment on the revenue sampler, asked without units), then ``--requests`` calls of the
app per kind and round, each kind after the other, rounds repeated. The unit ids follow
``bench/wrk/units.lua``: each request is a new unit with probability ``--new-share``,
else a unit this kind already sent, drawn uniformly.

What it isolates: no HTTP server and no load generator share the process, so the figure
is the handler's own Python (query parsing, the decision, the event's encoding and its
hand-over to the Kafka producer, the response) plus whatever the event loop does for it:
for a new sticky unit, the Redis call that stores its assignment, one request at a time
(no batching across concurrent requests, unlike under wrk). ``make bench`` measures the
same requests through the server; this tells which part of a difference is the handler.

Counting: CPU time of this process (``time.process_time``) over a round's calls divided
by the calls; every response must be a 200, or the run fails. Reported per kind: the best
round (the least disturbed on a shared machine) and every round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import MutableMapping
from typing import Any, Final

import httpx

from bench.harness import bench_stack, header
from services.decider import served_app

#: The kinds of request measured: per label, what the experiment is created with besides
#: its 2 arms and Thompson; with an ``assignment`` setting the requests carry unit ids,
#: without one they are the original API's unkeyed decisions.
KINDS: Final[dict[str, dict[str, str]]] = {
    "no unit": {},
    "sticky unit": {"assignment": "sticky"},
    "consistent unit": {"assignment": "consistent"},
    "per_request unit": {"assignment": "per_request"},
    "continuous, revenue_thompson": {
        "reward_type": "continuous",
        "strategy": "revenue_thompson",
    },
}

Message = MutableMapping[str, Any]


def unit_queries(experiment_id: str, n: int, new_share: float, seed: int) -> list[bytes]:
    """``n`` query strings for ``experiment_id`` with unit ids as ``units.lua`` sends them."""
    rng = random.Random(seed)
    sent = 0
    out: list[bytes] = []
    for _ in range(n):
        if sent == 0 or rng.random() < new_share:
            sent += 1
            unit = sent
        else:
            unit = rng.randint(1, sent)
        out.append(f"experiment_id={experiment_id}&unit_id=v{seed}-{unit}".encode())
    return out


def per_request_us(cpu_seconds: float, requests: int) -> float:
    """CPU µs per request of a round."""
    if requests <= 0:
        raise ValueError(f"a round needs at least one request, got {requests}")
    return cpu_seconds / requests * 1e6


async def measure(
    env: dict[str, str], requests: int, rounds: int, new_share: float
) -> dict[str, Any]:
    os.environ.update(env)  # the app reads its settings from here (open mode, the namespace)
    app = served_app()
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def call(query: bytes) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/decision",
            "query_string": query,
            "headers": [],
            "client": ("127.0.0.1", 1),
        }
        await app(scope, receive, send)

    results: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://decider") as client:
            for kind, settings in KINDS.items():
                body: dict[str, Any] = {
                    "experiment_id": _experiment(kind),
                    "arm_ids": ["arm-0", "arm-1"],
                    "strategy": "thompson",
                    **settings,
                }
                (await client.post("/experiments", json=body)).raise_for_status()
        for round_no in range(rounds):
            for i, kind in enumerate(KINDS):
                exp = _experiment(kind)
                if "assignment" not in KINDS[kind]:
                    queries = [f"experiment_id={exp}".encode()] * requests
                else:
                    seed = 1000 * round_no + i + 1  # new units are new to the server
                    queries = unit_queries(exp, requests, new_share, seed)
                for query in queries[:200]:  # warm: caches, allocation, connections
                    await call(query)
                statuses.clear()
                started = time.process_time()
                for query in queries:
                    await call(query)
                cpu = time.process_time() - started
                if statuses != [200] * len(queries):
                    bad = sorted({s for s in statuses if s != 200})
                    raise RuntimeError(
                        f"{kind}: {len(queries)} requests, statuses {bad} besides 200"
                    )
                results[kind].append(round(per_request_us(cpu, len(queries)), 2))
    base = min(results["no unit"])
    return {
        kind: {
            "best_cpu_us": min(rounds_us),
            "vs_no_unit": round(min(rounds_us) / base, 2),
            "rounds_cpu_us": rounds_us,
        }
        for kind, rounds_us in results.items()
    }


def _experiment(kind: str) -> str:
    return "cost-" + "".join(c if c.isalnum() else "-" for c in kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=15_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--new-share", type=float, default=0.25)
    args = parser.parse_args()
    if not 0.0 <= args.new_share <= 1.0:
        parser.error("--new-share must be in [0, 1]")
    print(header(f"in-process ASGI calls, {args.requests} per kind and round"))
    with bench_stack() as (_stack, env, _topics, _logdir):
        results = asyncio.run(measure(env, args.requests, args.rounds, args.new_share))
    print("| Request | CPU µs per request (best round) | vs no unit | every round |")
    print("|---|---|---|---|")
    for kind, r in results.items():
        rounds = ", ".join(f"{x:.1f}" for x in r["rounds_cpu_us"])
        print(f"| {kind} | {r['best_cpu_us']:.1f} | {r['vs_no_unit']:.2f} | {rounds} |")


if __name__ == "__main__":
    main()

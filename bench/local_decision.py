"""CPU cost of one local decision (:meth:`mab_client.assignment.Allocation.choose`).

``python -m bench.local_decision [--units 20000] [--repeats 5] [--arms 2 3 10 100]``: for
each arm count, an allocation of uneven weights and a 16-hex salt, then ``--units``
distinct visitor ids (UUID-shaped, 36 characters, as a storefront cookie holds), each
decided once per repeat. Distinct ids because a repeated id would measure a hash of
warm, identical bytes and no normalisation work a real page view pays.

Two figures per arm count, both in CPU-bound wall time on whatever else the machine runs
(on a shared machine compare runs made back to back):

* ``timeit``: ``timeit.Timer`` over batches of 100 distinct ids; per call = batch time /
  100; median and p99 over all batches of all repeats. Includes the loop (~5 ns a call).
* ``per call``: ``perf_counter_ns`` around every single call, minus the median of an
  empty timed interval (the timer's own cost); median and p99 over every call. The
  p99 of this column is the tail a page view sees (GC pauses, preemption).

Each arm count is measured twice: the rule alone (``choose``) and the SDK's local mode
(``MabClient(..., local=True).decide(experiment_id, unit_id)``: the held allocation's
lookup, the rule, and the exposure buffered with its id and timestamp), which is what a
storefront pays per page view. The client holds the allocation before the clock starts
and never flushes during the run (its buffer is sized for every call), so no network
or background thread is measured.

Issue 16's goal: ≤ 2 µs median per local decision for 2-3 arms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Final

from mab_client import MabClient
from mab_client.assignment import Allocation
from mab_client.local import LocalSettings
from mab_client.models import AllocationArmPublic, AllocationHashPublic, AllocationPublic

SALT: Final = "5f1d3c0a9b8e7d6c"
BATCH: Final = 100


def allocation(arms: int, seed: int = 1) -> Allocation:
    """Uneven weights (a bandit's allocation is rarely uniform), summing to 1."""
    rng = random.Random(seed)
    raw = [rng.expovariate(1.0) for _ in range(arms)]
    total = sum(raw)
    weights = [w / total for w in raw]
    return Allocation(
        experiment_id="bench-local",
        version=29_000_000,
        arm_ids=tuple(f"arm-{i}" for i in range(arms)),
        weights=tuple(weights),
        salt=SALT,
    )


def local_client(alloc: Allocation, calls: int) -> MabClient:
    """A local-mode client holding ``alloc`` (as if fetched), buffering ``calls`` exposures
    without a flush (the flush interval is longer than any run)."""
    client = MabClient(
        "http://decider.invalid",
        local=True,
        local_settings=LocalSettings(max_buffer=calls + 1, flush_interval_s=3600.0),
    )
    public = AllocationPublic(
        experiment_id=alloc.experiment_id,
        version=alloc.version,
        arms=[
            AllocationArmPublic(arm_id=a, weight=w)
            for a, w in zip(alloc.arm_ids, alloc.weights, strict=True)
        ],
        assignment="consistent",
        salt=alloc.salt,
        hash=AllocationHashPublic(algorithm="mab-race-sha256-v1", unit_id_storage="hashed"),
        valid_until=(alloc.version + 1) * 60,
        min_arm_share=0.0,
    )
    assert client.local is not None
    client.local.fetched(alloc.experiment_id, public, None)
    return client


def visitor_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    ids: set[str] = set()
    while len(ids) < n:
        h = f"{rng.getrandbits(128):032x}"
        ids.add(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return sorted(ids)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Decide = Callable[[str], object]


def timeit_ns(decide: Decide, ids: list[str], repeats: int) -> list[float]:
    """Per-call ns of each batch of ``BATCH`` distinct ids, over ``repeats`` passes."""
    per_call: list[float] = []
    for _ in range(repeats):
        for start in range(0, len(ids) - BATCH + 1, BATCH):
            timer = timeit.Timer(
                "for u in batch: decide(u)",
                globals={"batch": ids[start : start + BATCH], "decide": decide},
            )
            per_call.append(timer.timeit(number=1) / BATCH * 1e9)
    return per_call


def single_call_ns(decide: Decide, ids: list[str], repeats: int) -> list[float]:
    """ns of every call, each timed alone, the timer's own cost subtracted."""
    clock = time.perf_counter_ns
    empty = []
    for _ in range(len(ids)):
        t0 = clock()
        empty.append(clock() - t0)
    overhead = statistics.median(empty)
    out: list[float] = []
    for _ in range(repeats):
        for u in ids:
            t0 = clock()
            decide(u)
            out.append(clock() - t0 - overhead)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CPU cost of one local decision")
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--arms", type=int, nargs="+", default=[2, 3, 10, 100])
    args = parser.parse_args(argv)
    ids = visitor_ids(args.units)
    print(f"local decisions, {len(ids)} distinct unit ids x {args.repeats} repeats")
    print("arms  what           timeit median  timeit p99  call median  call p99")
    for arms in args.arms:
        alloc = allocation(arms)
        # Enough room for the warm-up and both measurements of every repeat.
        client = local_client(alloc, 1000 + 3 * args.repeats * len(ids))
        exp = alloc.experiment_id
        measured: list[tuple[str, Decide]] = [
            ("rule (choose)", alloc.choose),
            ("client.decide", lambda u, d=client.decide, e=exp: d(e, u)),  # type: ignore[misc]
        ]
        for what, decide in measured:
            for u in ids[:1000]:  # warm up: allocator, branch caches
                decide(u)
            batches = timeit_ns(decide, ids, args.repeats)
            calls = single_call_ns(decide, ids, args.repeats)
            print(
                f"{arms:>4}  {what:<13}  {statistics.median(batches) / 1e3:>10.2f} µs  "
                f"{quantile(batches, 0.99) / 1e3:>7.2f} µs  "
                f"{statistics.median(calls) / 1e3:>8.2f} µs  "
                f"{quantile(calls, 0.99) / 1e3:>5.2f} µs"
            )
        assert client.local is not None
        print(
            f"      (client buffered {len(client.local.buffer)} exposures, dropped "
            f"{client.local.metrics.dropped})"
        )
        client.local.buffer.clear()  # nothing to send: the server is not there
        client.close()


if __name__ == "__main__":
    main()

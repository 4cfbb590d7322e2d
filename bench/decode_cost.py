"""CPU cost of decoding one consumed record, the largest share of folding it.

``python -m bench.decode_cost [--records 100000] [--rounds 5]``: builds ``--records``
reward records as the fold rows of :mod:`bench.run` pre-fill them (the API's full
``RewardObserved`` JSON) and as many decision records (a ``DecisionMade`` as the decider
logs it), wraps them in the consumers' own record type
(:class:`~stream_runtime.kafka_consumer.KafkaRecord`), and times
:func:`stream_runtime.batch.decode_batch` with the topics' decoders over all of them,
the cyclic collector held off as the engine holds it off (:func:`~stream_runtime.batch.
gc_deferred`). No Kafka, no Redis: this isolates the decoding that the fold rows
include.

Counting: CPU time of this process (``time.process_time``) over one ``decode_batch``
call divided by the records it was given; every record must come out as an event of
its kind (no reject, nothing ignored), or the run fails. Reported per kind: the best
round (the least disturbed on a shared machine) and every round.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any, Final

from bench.fold_rows import prefill_record
from bench.harness import header
from schemas.codec import encode
from schemas.events import DecisionMade
from stream_runtime.batch import (
    DecodedBatch,
    Decoder,
    decode_batch,
    decode_decision_record,
    decode_reward_record,
    gc_deferred,
)
from stream_runtime.kafka_consumer import KafkaRecord

REWARDS: Final = "bench-rewards"
DECISIONS: Final = "bench-decisions"
DECODERS: Final[dict[str, Decoder]] = {
    REWARDS: decode_reward_record,
    DECISIONS: decode_decision_record,
}
EXPERIMENT: Final = "bench-decode"
ARMS: Final = ("a", "b", "c")


def reward_records(n: int) -> list[KafkaRecord]:
    """``n`` reward records as the fold rows pre-fill them (``bench.fold_rows``)."""
    return [
        KafkaRecord(REWARDS, 0, i, 1_700_000_000_000, prefill_record(EXPERIMENT, ARMS, i))
        for i in range(n)
    ]


def decision_records(n: int) -> list[KafkaRecord]:
    """``n`` decision records as the decider logs them (its wire encoder)."""
    out = []
    for i in range(n):
        event = DecisionMade(
            experiment_id=EXPERIMENT,
            decision_id=f"{i:032x}.{i % len(ARMS)}",
            arm_id=ARMS[i % len(ARMS)],
            strategy="thompson",
            propensity=0.4,
            config_version=1,
            snapshot_version=i,
        )
        out.append(KafkaRecord(DECISIONS, 0, i, 1_700_000_000_000, encode(event)))
    return out


def decoded_events(decoded: DecodedBatch) -> int:
    """Events a decoded batch holds; raises if any record was rejected or ignored."""
    if decoded.rejected or decoded.ignored:
        first = decoded.rejected[0] if decoded.rejected else None
        raise RuntimeError(
            f"{len(decoded.rejected)} rejected, {decoded.ignored} ignored; first: {first}"
        )
    return sum(len(g) for g in decoded.groups.values())


def per_record_us(cpu_seconds: float, records: int) -> float:
    """CPU µs per record of a round."""
    if records <= 0:
        raise ValueError(f"a round needs at least one record, got {records}")
    return cpu_seconds / records * 1e6


def time_decode(records: Sequence[KafkaRecord], rounds: int) -> list[float]:
    """CPU µs per record of each round of ``decode_batch(records)``."""
    out = []
    for _ in range(rounds):
        with gc_deferred():
            started = time.process_time()
            decoded = decode_batch(records, DECODERS)
            cpu = time.process_time() - started
        events = decoded_events(decoded)
        if events != len(records):
            raise RuntimeError(f"{events} events from {len(records)} records")
        del decoded
        out.append(round(per_record_us(cpu, len(records)), 2))
    return out


def measure(records: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind, made in (
        ("reward", reward_records(records)),
        ("decision", decision_records(records)),
    ):
        every = time_decode(made, rounds)
        results[kind] = {"best_cpu_us": min(every), "rounds_cpu_us": every}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(header(f"decode_batch in process, {args.records} records per kind and round"))
    print("| Record | CPU µs per record (best round) | every round |")
    print("|---|---|---|")
    for kind, r in measure(args.records, args.rounds).items():
        every = ", ".join(f"{x:.2f}" for x in r["rounds_cpu_us"])
        print(f"| {kind} | {r['best_cpu_us']:.2f} | {every} |")


if __name__ == "__main__":
    main()

"""Guardrail error rate and power through the real fold (docs/benchmarks.md, "Guardrails").

Two arms, ``control`` and ``treat``, each reward carrying a Bernoulli ``refund`` metric;
one guardrail ``refund increase_is_bad`` with ``max_relative_change`` (default 0: any
proven increase is a breach, the hardest setting for the A/A). Every replication folds
batches of rewards (``--batch`` per arm, alternating arms) through
:func:`bandit_core.fold.fold_into`, exactly as the reward consumer and replay do, and
peeks after every batch: the first breach ends the replication.

* **A/A**: both arms refund at ``--rate``; a breach is a false alarm. The false breach
  rate over ``--replications`` is compared with ``guardrail_alpha``.
* **Power**: ``treat`` refunds at ``rate * (1 + --increase)``; the detection sample size
  is the arm's count of metric values at its breach (median over the replications that
  detect within ``--horizon``).

The prediction: the sample size at which the two confidence sequences, fed streams whose
running means are exactly the two rates (a deterministic Bernoulli pattern,
``x_i = floor((i + 1) p) - floor(i p)``), first separate by the guardrail's rule. It is
what the method's widths alone imply; random data cross that point earlier or later
around it.

``python -m bench.guardrails`` (``--replications 100`` by default; ``--json`` for the
raw numbers).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from bandit_core.fold import fold_into
from bandit_core.guardrails import breached
from bandit_core.state import ExperimentState
from bandit_core.stopping import ConfidenceSequence
from schemas.events import ExperimentConfig, ExperimentCreated, GuardrailSpec, RewardObserved

EXP = "guardrail-bench"
ARMS = ("control", "treat")


def guarded_config(alpha: float, relative: float, min_samples: int) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "experiment_id": EXP,
            "arm_ids": ARMS,
            "strategy": "thompson",
            "version": 1,
            "created_ts": 0.0,
            "updated_ts": 0.0,
            "metrics": [{"name": "refund", "min": 0, "max": 1}],
            "guardrails": [
                {
                    "metric": "refund",
                    "direction": "increase_is_bad",
                    "max_relative_change": relative,
                    "min_samples": min_samples,
                }
            ],
            "control_arm_id": "control",
            "guardrail_alpha": alpha,
        }
    )


@dataclass(frozen=True, slots=True)
class Replication:
    """One replication's outcome: the treat arm's sample count at its first breach and
    the batch it was seen after (``None``: no breach within the horizon)."""

    breached_at: int | None
    batch: int | None


def run_replication(
    config: ExperimentConfig,
    rates: tuple[float, float],
    horizon: int,
    batch: int,
    seed: int,
) -> Replication:
    """Fold up to ``horizon`` rewards per arm in batches of ``batch`` per arm, peeking
    after each batch; stop at the first breach."""
    rng = random.Random(seed)
    state = ExperimentState(EXP)
    fold_into(state, [ExperimentCreated(experiment_id=EXP, ts=0.0, config=config)])
    sent = 0
    number = 0
    while sent < horizon:
        size = min(batch, horizon - sent)
        events = []
        for i in range(sent, sent + size):
            for arm, rate in zip(ARMS, rates, strict=True):
                refund = 1.0 if rng.random() < rate else 0.0
                # Built without validation (the values are known valid): the bench
                # measures the fold's statistics, not pydantic.
                events.append(
                    RewardObserved.model_construct(
                        event_id=f"{arm}-{i}",
                        ts=float(i),
                        experiment_id=EXP,
                        arm_id=arm,
                        reward=1.0 - refund,
                        decision_id=None,
                        source="bench",
                        metrics={"refund": refund},
                    )
                )
        sent += size
        number += 1
        result = fold_into(state, events)
        state.seen.clear()  # dedupe keys are not what is measured; keep memory flat
        if result.breaches:
            return Replication(result.breaches[0].arm_samples, number)
    return Replication(None, None)


@dataclass(frozen=True, slots=True)
class Summary:
    """The replications of one scenario: how many breached, their rate, and the median
    (and quartiles) of the sample size at the breach over those that breached."""

    replications: int
    breaches: int
    rate: float
    median_n: float | None
    quartiles: tuple[float, float] | None


def summarise(reps: Sequence[Replication]) -> Summary:
    """Count each replication once: breached (a sample size) or not (``None``)."""
    sizes = sorted(r.breached_at for r in reps if r.breached_at is not None)
    median = float(statistics.median(sizes)) if sizes else None
    quartiles = None
    if len(sizes) >= 2:
        q = statistics.quantiles(sizes, n=4)
        quartiles = (q[0], q[2])
    total = len(reps)
    return Summary(total, len(sizes), len(sizes) / total if total else 0.0, median, quartiles)


def _pattern(p: float, i: int) -> float:
    """The i-th value of the deterministic Bernoulli stream whose running mean is ``p``."""
    return float(math.floor((i + 1) * p) - math.floor(i * p))


def predicted_n(
    guardrail: GuardrailSpec, alpha: float, rates: tuple[float, float], limit: int
) -> int | None:
    """The first per-arm sample size at which sequences fed the two rates' deterministic
    streams breach ``guardrail`` (``None`` within ``limit``)."""
    control = ConfidenceSequence(alpha=alpha / 2.0, low=0.0, high=1.0)
    arm = ConfidenceSequence(alpha=alpha / 2.0, low=0.0, high=1.0)
    for i in range(limit):
        control.update(_pattern(rates[0], i))
        arm.update(_pattern(rates[1], i))
        if i + 1 >= guardrail.min_samples and breached(
            guardrail, arm.interval(), control.interval()
        ):
            return i + 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--replications", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.2, help="control refund rate")
    parser.add_argument("--increase", type=float, default=0.2, help="relative increase of treat")
    parser.add_argument("--relative", type=float, default=0.0, help="max_relative_change")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--min-samples", type=int, default=100)
    parser.add_argument("--batch", type=int, default=250, help="rewards per arm per batch")
    parser.add_argument("--horizon", type=int, default=40_000, help="rewards per arm, at most")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = guarded_config(args.alpha, args.relative, args.min_samples)
    worse = args.rate * (1.0 + args.increase)
    out: dict[str, object] = {"settings": vars(args)}
    started = time.perf_counter()
    for name, rates in (("aa", (args.rate, args.rate)), ("power", (args.rate, worse))):
        reps = [
            run_replication(config, rates, args.horizon, args.batch, args.seed * 1000 + r)
            for r in range(args.replications)
        ]
        out[name] = vars_of(summarise(reps))
    out["predicted_n"] = predicted_n(
        config.guardrails[0], args.alpha, (args.rate, worse), args.horizon
    )
    out["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        aa, power = out["aa"], out["power"]
        print(f"A/A false breach rate: {aa} (alpha {args.alpha})")
        print(f"power ({args.increase:.0%} increase): {power}")
        print(f"predicted detection n per arm: {out['predicted_n']}")
    return 0


def vars_of(summary: Summary) -> dict[str, object]:
    return {
        "replications": summary.replications,
        "breaches": summary.breaches,
        "rate": summary.rate,
        "median_n": summary.median_n,
        "quartiles": summary.quartiles,
    }


if __name__ == "__main__":
    sys.exit(main())

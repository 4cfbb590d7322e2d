"""The decider rows' table says what a reader needs to judge the unit and continuous
rows: how many of the sticky requests were new units, next to the rate, and each ratio
against the unkeyed binary row of the same run."""

from __future__ import annotations

from typing import Any

import pytest

from bench.decision_rows import CONTINUOUS_ROW
from bench.run import markdown

pytestmark = pytest.mark.unit


def row(rps: int, p99: float, **extra: Any) -> dict[str, Any]:
    return {
        "rps": rps,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "p999_ms": p99 * 2,
        "errors": 0,
        "requests": rps * 8,
        **extra,
    }


def test_sticky_rows_show_their_new_unit_share_and_ratios() -> None:
    results = {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": "2 cores, load average 1.0",
        "wrk": "wrk -t1 -c32 -d8s, median of 2",
        "GET /decision, 2 arms, 1 worker(s)": row(20_000, 4.0, decision_events_logged=160_000),
        "GET /decision, 2 arms, sticky units": row(
            16_000, 6.0, decision_events_logged=32_000, new_units=32_000, new_unit_share=0.25
        ),
        "GET /decision, 2 arms, sticky units, all new": row(
            10_000, 12.5, decision_events_logged=80_000, new_units=80_000, new_unit_share=1.0
        ),
        "GET /decision, 2 arms, consistent units": row(19_000, 5.0, decision_events_logged=1),
    }
    table = markdown(results)
    sticky = next(line for line in table.splitlines() if "sticky units |" in line)
    assert "| 16,000 |" in sticky
    assert "(32000 new units, 25%)" in sticky
    worst = next(line for line in table.splitlines() if "all new |" in line)
    assert "(80000 new units, 100%)" in worst
    summary = next(line for line in table.splitlines() if line.startswith("Units ("))
    assert "25% of the sticky row's requests were new units" in summary
    assert "sticky 0.80 of the unkeyed 2-arm throughput" in summary
    assert "every request a new unit: 0.50, p99 12.5 ms" in summary
    assert "consistent 0.95" in summary


def test_the_continuous_row_is_read_against_binary_thompson_of_the_same_run() -> None:
    results = {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": "2 cores, load average 1.0",
        "wrk": "wrk -t1 -c32 -d8s, median of 2",
        "GET /decision, 2 arms, 1 worker(s)": row(20_000, 4.0, decision_events_logged=160_000),
        CONTINUOUS_ROW: row(18_000, 4.5, decision_events_logged=144_000),
    }
    table = markdown(results)
    line = next(line for line in table.splitlines() if line.startswith(f"| {CONTINUOUS_ROW} |"))
    assert "| 18,000 |" in line
    assert "144000 logged / 144000 answered" in line
    summary = next(line for line in table.splitlines() if line.startswith("Continuous"))
    assert "0.90 of the unkeyed 2-arm binary Thompson throughput" in summary
    assert "goal ≥ 0.8" in summary

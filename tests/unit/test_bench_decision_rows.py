"""The decider rows count what a user would count: the decision events a row logged."""

from __future__ import annotations

from typing import Any

import pytest

from bench.decision_rows import counted_per_answer

pytestmark = pytest.mark.unit


def test_a_row_counts_the_events_logged_while_it_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    """The topic is counted before and after the row (after the producer's flush): the
    difference is the row's events, and every answered request must have one."""
    monkeypatch.setattr("bench.decision_rows.time.sleep", lambda _s: None)
    topic = [1_000]  # records already on the topic from earlier rows

    def run(logs: int) -> dict[str, Any]:
        topic[0] += logs
        return {"rps": 100, "requests": 800, "errors": 2}

    counted = counted_per_answer(lambda: run(798), lambda: topic[0])
    assert (counted["decision_events_logged"], counted["decision_events_missing"]) == (798, 0)
    short = counted_per_answer(lambda: run(790), lambda: topic[0])
    assert (short["decision_events_logged"], short["decision_events_missing"]) == (790, 8)

"""The decider's evaluation process: work runs there, never in the serving process.

Each call here is a stdlib function run in the worker (``os.getpid`` answers with the
worker's pid), so the tests need neither Kafka nor Redis; the endpoint's evaluation
through it is tested in ``tests/integration/test_offpolicy_evaluate.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from services.decider.evaluation import NICENESS, EvaluationProcessError, EvaluationWorker

pytestmark = pytest.mark.unit

#: os.nice() never goes beyond this.
MAX_NICE = 19


@pytest.fixture
def worker() -> Iterator[EvaluationWorker]:
    w = EvaluationWorker()
    yield w
    w.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_calls_run_in_one_lower_priority_process_kept_between_calls(
    worker: EvaluationWorker,
) -> None:
    """Scenario: two calls, then the worker is closed.
    We expect: both ran in one other process, started at the first call, nice'd below
    ours; closing stops it."""
    assert worker.pid is None  # nothing is started before the first evaluation
    first = await worker.call(os.getpid)
    assert first != os.getpid()
    assert worker.pid == first
    assert await worker.call(os.getpid) == first
    assert await worker.call(os.nice, 0) == min(MAX_NICE, os.nice(0) + NICENESS)
    worker.close()
    assert worker.pid is None
    assert gone(first)


async def test_an_error_there_is_raised_here_with_its_traceback(worker: EvaluationWorker) -> None:
    """Scenario: the called function raises in the worker.
    We expect: EvaluationProcessError carrying the worker's traceback (not "stopped"),
    and the same worker serves the next call."""
    pid = await worker.call(os.getpid)
    with pytest.raises(EvaluationProcessError) as raised:
        await worker.call(int, "not a number")
    assert not raised.value.stopped
    assert "ValueError: invalid literal for int()" in str(raised.value)
    assert await worker.call(os.getpid) == pid


async def test_a_worker_that_dies_mid_call_is_replaced(worker: EvaluationWorker) -> None:
    """Scenario: the worker process dies while computing (SIGABRT here; the OOM killer
    in real life).
    We expect: that call fails as "stopped" (the route's 503, retry), and the next call
    starts a fresh worker."""
    pid = await worker.call(os.getpid)
    with pytest.raises(EvaluationProcessError) as raised:
        await worker.call(os.abort)
    assert raised.value.stopped
    assert gone(pid)
    fresh = await worker.call(os.getpid)
    assert fresh not in (pid, os.getpid())


async def test_a_caller_that_stops_waiting_stops_the_work(worker: EvaluationWorker) -> None:
    """Scenario: a call is cancelled while the worker computes (a 30 s sleep).
    We expect: the worker is stopped at once rather than left computing, and the next
    call gets its own answer from a fresh worker (never the abandoned call's)."""
    pid = await worker.call(os.getpid)
    slow = asyncio.create_task(worker.call(time.sleep, 30))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert time.monotonic() - started < 10
    assert gone(pid)
    assert await worker.call(str.upper, "mine") == "MINE"
    assert worker.pid not in (None, pid)

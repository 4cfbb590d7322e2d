"""The SDK's local mode without a server: the buffer, its bound, the flush schedule, the
refresh schedule and the stale flag (``mab_client.local``). With a real decider:
tests/integration/test_client_local.py."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from typing import Any, TypeVar

import httpx
import pytest

from mab_client import (
    AsyncMabClient,
    InvalidAllocationError,
    InvalidRequestError,
    MabClient,
    RetryPolicy,
)
from mab_client.local import LocalSettings, LocalState, allocation_of, exposure_items
from mab_client.models import AllocationArmPublic, AllocationHashPublic, AllocationPublic

pytestmark = pytest.mark.unit

T0 = 1_776_189_600.0
C = TypeVar("C", MabClient, AsyncMabClient)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def public(version: int = int(T0 // 60), algorithm: str = "mab-race-sha256-v1") -> AllocationPublic:
    return AllocationPublic(
        experiment_id="cta",
        version=version,
        arms=[
            AllocationArmPublic(arm_id="blue", weight=0.25),
            AllocationArmPublic(arm_id="green", weight=0.75),
        ],
        assignment="consistent",
        salt="9f2c4e1a7b3d5f60",
        hash=AllocationHashPublic(algorithm=algorithm, unit_id_storage="hashed"),
        valid_until=(version + 1) * 60,
        min_arm_share=0.0,
    )


def state(clock: Clock, **settings: float) -> LocalState:
    s = LocalState(LocalSettings(**settings), clock=clock, rng=random.Random(1))  # type: ignore[arg-type]
    s.fetched("cta", public(), '"etag-1"')
    return s


def test_decisions_follow_the_rule_and_buffer_one_exposure_each() -> None:
    clock = Clock()
    s = state(clock)
    rule = allocation_of(public())
    decisions = [rule.choose(f"u{i}") for i in range(10)]
    assert [s.decide("cta", f"u{i}") for i in range(10)] == decisions
    assert s.decide("other", "u1") is None  # not held: the client fetches it
    items = exposure_items(s, list(s.buffer))
    assert [(i.unit_id, i.arm_id, i.allocation_version) for i in items] == [
        (f"u{i}", d.arm_id, d.version) for i, d in enumerate(decisions)
    ]
    assert len({i.exposure_id for i in items}) == 10
    assert all(i.ts == T0 for i in items)
    assert s.metrics.decisions == 10


def test_flush_is_due_when_a_batch_is_full_or_the_oldest_waited() -> None:
    clock = Clock()
    woken: list[int] = []
    s = state(clock, flush_size=3, flush_interval_s=2.0, max_buffer=10)
    s.wake = lambda: woken.append(len(s.buffer))
    assert not s.flush_due()
    s.decide("cta", "a")
    assert not s.flush_due()
    assert s.next_wake(clock.now) == pytest.approx(2.0)
    clock.now += 2.0
    assert s.flush_due()
    s.decide("cta", "b")
    s.decide("cta", "c")
    s.decide("cta", "d")
    assert woken == [3]  # once, when the threshold was crossed
    batch = s.take_batch()
    assert [p[1] for p in batch] == ["a", "b", "c"]
    assert [p[1] for p in s.buffer] == ["d"]


def test_a_full_buffer_drops_the_oldest_and_counts_them() -> None:
    clock = Clock()
    s = state(clock, flush_size=2, max_buffer=5)
    for i in range(12):
        s.decide("cta", f"u{i}")
    assert [p[1] for p in s.buffer] == [f"u{i}" for i in range(7, 12)]
    assert (s.metrics.decisions, s.metrics.dropped) == (12, 7)
    batch = s.take_batch()
    assert [p[1] for p in batch] == ["u7", "u8"]
    assert s.metrics.dropped == 7  # counted once, whether seen in the buffer or taken

    # A batch that could not be sent goes back to the front; what no longer fits is
    # dropped, oldest first.
    s.decide("cta", "u12")
    s.decide("cta", "u13")  # the buffer is full again: u9 .. u13
    s.put_back(batch, ConnectionError("down"))
    assert [p[1] for p in s.buffer] == ["u9", "u10", "u11", "u12", "u13"]
    assert s.metrics.dropped == 9  # u0-u6, then u7 and u8 on put back, none twice
    assert s.metrics.stale
    assert s.metrics.flush_failures == 1


def test_put_back_keeps_order_when_there_is_room() -> None:
    s = state(Clock(), flush_size=2, max_buffer=10)
    for i in range(5):
        s.decide("cta", f"u{i}")
    batch = s.take_batch()
    s.put_back(batch, ConnectionError("down"))
    assert [p[1] for p in s.buffer] == [f"u{i}" for i in range(5)]
    assert s.metrics.dropped == 0
    again = s.take_batch()
    assert again == batch
    assert s.metrics.dropped == 0


def test_a_refused_batch_drops_only_the_named_items() -> None:
    s = state(Clock(), flush_size=4)
    for i in range(4):
        s.decide("cta", f"u{i}")
    batch = s.take_batch()
    keep = s.refused(batch, [{"index": 1, "type": "unknown_allocation", "msg": "old"}])
    assert [p[1] for p in keep] == ["u0", "u2", "u3"]
    assert s.metrics.rejected == 1
    assert s.refused(keep, [{"msg": "whole request refused"}]) == []
    assert s.metrics.rejected == 4


def test_refresh_after_the_version_ends_and_back_off_while_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(T0 + 10.0)
    s = state(clock, refresh_delay_s=0.5)
    held = s.held["cta"]
    assert T0 + 60.5 <= held.refresh_at <= T0 + 61.0
    assert s.refresh_due(T0 + 59.0) == []
    assert s.refresh_due(T0 + 61.0) == ["cta"]

    caplog.set_level(logging.WARNING, "mab_client")
    clock.now = T0 + 61.0
    s.refresh_failed("cta", ConnectionError("refused"))
    s.refresh_failed("cta", ConnectionError("refused"))
    assert s.metrics.stale
    assert s.metrics.refresh_failures == 2
    assert held.refresh_at == T0 + 61.0 + 2.0  # 1 s, then 2 s
    assert [r.message for r in caplog.records].count(
        next(r.message for r in caplog.records if "unreachable" in r.message)
    ) == 1  # one warning per outage
    # Still deciding from the held allocation.
    assert s.decide("cta", "u1") == allocation_of(public()).choose("u1")

    s.fetched("cta", None, '"etag-1"')  # 304: the server answers again
    assert not s.metrics.stale
    assert held.failures == 0
    assert any("reachable again" in r.message for r in caplog.records)
    s.fetched("cta", public(int(T0 // 60) + 1), '"etag-2"')
    assert s.held["cta"].allocation.version == int(T0 // 60) + 1


def test_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(InvalidAllocationError, match="does not implement"):
        allocation_of(public(algorithm="mab-race-sha256-v2"))


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="flush_size"):
        LocalSettings(flush_size=1001)
    with pytest.raises(ValueError, match="max_buffer"):
        LocalSettings(flush_size=100, max_buffer=10)


def test_a_unit_decision_needs_local_mode() -> None:
    with MabClient("http://decider.invalid") as mab:
        with pytest.raises(InvalidRequestError, match="local=True"):
            mab.decide("cta", "visitor-1")
        with pytest.raises(InvalidRequestError, match="local=True"):
            _ = mab.local_metrics


# -- a flush in flight when the client closes or flushes -------------------------------
# The server is an in-process transport that answers the allocation at once and holds
# each ``POST /exposures`` until the test releases it, so "a batch in flight" is a state
# the test controls rather than a timing it hopes for.


def _allocation_answer() -> httpx.Response:
    return httpx.Response(200, json=public().model_dump(mode="json"), headers={"ETag": '"e1"'})


def _accept(request: httpx.Request, accepted: set[str]) -> httpx.Response:
    """Idempotent by exposure id, as the decider is."""
    ids = [e["exposure_id"] for e in json.loads(request.content)["exposures"]]
    new = [i for i in ids if i not in accepted]
    accepted.update(new)
    return httpx.Response(200, json={"accepted": len(new), "duplicates": len(ids) - len(new)})


class HeldExposuresAsync(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.accepted: set[str] = set()
        self.in_flight = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/allocation"):
            return _allocation_answer()
        self.in_flight.set()
        await self.release.wait()
        return _accept(request, self.accepted)


class HeldExposuresSync(httpx.BaseTransport):
    def __init__(self) -> None:
        self.accepted: set[str] = set()
        self.in_flight = threading.Event()
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/allocation"):
            return _allocation_answer()
        self.in_flight.set()
        assert self.release.wait(10.0)
        return _accept(request, self.accepted)


def _batching_client(kind: type[C], transport: Any) -> C:
    """A local client of ``kind`` over ``transport`` whose fifth decision fills a batch,
    sent in one attempt, its clock just after the allocation's start."""
    mab = kind(
        "http://mab",
        transport=transport,
        local=True,
        local_settings=LocalSettings(flush_size=5),
        retry=RetryPolicy(max_attempts=1),
    )
    assert mab.local is not None
    mab.local.clock = Clock(T0 + 1.0)
    return mab


async def _async_client_with_a_batch_in_flight() -> tuple[AsyncMabClient, HeldExposuresAsync]:
    """Five decisions, a full batch: the worker has taken them out of the buffer and
    its ``POST /exposures`` waits."""
    transport = HeldExposuresAsync()
    mab = _batching_client(AsyncMabClient, transport)
    for i in range(5):
        await mab.decide("cta", f"u{i}")
    await asyncio.wait_for(transport.in_flight.wait(), 10.0)
    assert mab.local is not None
    assert not mab.local.buffer
    return mab, transport


async def _let_run() -> None:
    """Let the tasks just created run until they wait on something."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_async_close_lets_the_batch_in_flight_finish() -> None:
    """Scenario: ``aclose`` while the worker's batch is being posted.
    We expect: the batch is sent once (not cancelled and lost, not resent), and close
    returns after it."""
    mab, transport = await _async_client_with_a_batch_in_flight()
    closing = asyncio.create_task(mab.aclose())
    await _let_run()
    transport.release.set()
    await asyncio.wait_for(closing, 10.0)
    assert mab.local is not None
    m = mab.local.metrics
    assert (m.decisions, m.sent, m.duplicates, m.dropped) == (5, 5, 0, 0)
    assert len(transport.accepted) == 5


async def test_async_flush_waits_for_the_batch_in_flight() -> None:
    """Scenario: ``flush`` while the buffer is empty but the worker's batch is posted.
    We expect: flush returns once that batch is sent, so the metrics read after it
    count every decision made before it."""
    mab, transport = await _async_client_with_a_batch_in_flight()
    flushing = asyncio.create_task(mab.flush())
    await _let_run()
    assert not flushing.done()
    transport.release.set()
    await asyncio.wait_for(flushing, 10.0)
    assert mab.local is not None
    assert mab.local.metrics.sent == 5
    await mab.aclose()


async def test_a_cancelled_flush_puts_its_batch_back() -> None:
    """Scenario: the task flushing (here the worker) is cancelled while its batch is
    posted, as when an application cancels its tasks at shutdown.
    We expect: the batch back in the buffer, in order, not lost; sent at close."""
    mab, transport = await _async_client_with_a_batch_in_flight()
    assert mab.local is not None
    assert mab._worker is not None
    mab._worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await mab._worker
    assert [p[1] for p in mab.local.buffer] == [f"u{i}" for i in range(5)]
    transport.release.set()
    await mab.aclose()
    m = mab.local.metrics
    assert (m.sent, m.dropped) == (5, 0)
    assert len(transport.accepted) == 5


def _sync_client_with_a_batch_in_flight() -> tuple[MabClient, HeldExposuresSync]:
    transport = HeldExposuresSync()
    mab = _batching_client(MabClient, transport)
    for i in range(5):
        mab.decide("cta", f"u{i}")
    assert transport.in_flight.wait(10.0)
    return mab, transport


@pytest.mark.parametrize("call", ["flush", "close"])
def test_sync_flush_and_close_wait_for_the_batch_in_flight(call: str) -> None:
    """Scenario: ``flush`` or ``close`` on the caller's thread while the worker thread
    posts a batch.
    We expect: the call returns after that batch is sent; nothing is lost or resent."""
    mab, transport = _sync_client_with_a_batch_in_flight()
    sent_on_return: list[int] = []

    def caller() -> None:
        getattr(mab, call)()
        sent_on_return.append(mab.local_metrics.sent)

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(0.2)  # still waiting (after the fix), or long returned (before it)
    transport.release.set()
    thread.join(10.0)
    assert sent_on_return == [5]
    assert len(transport.accepted) == 5
    mab.close()

"""The SDK's local mode against the real decider (Kafka, Redis): the first fetch, the
refresh with ``If-None-Match`` and at the next version, serving while the decider is
unreachable, the buffer's bound, and the flush at close.

The decider is served in process; "unreachable" is a transport in front of it that
refuses connections while a switch is on, as a network partition would. The SDK's and
the decider's clocks are pinned to one instant and moved together across an epoch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import pytest_asyncio

from mab_client import AsyncMabClient, MabClient, MabTransportError, RetryPolicy
from mab_client.local import LocalSettings, allocation_of
from mab_client.models import AllocationPublic
from services.decider.hot_path import DecisionFastPath
from services.decider.runtime import runtime_of
from tests.integration.conftest import SettingsFactory, serve_decider

pytestmark = pytest.mark.integration

ARMS = ["blue-button", "green-button", "Free Shipping"]
#: The start of a 60 s epoch.
T0 = 1_776_189_600.0


class Partition(httpx.AsyncBaseTransport):
    """The decider's transport, counting answers by path and status; ``down`` refuses
    every connection the way an unreachable host does."""

    def __init__(self, app: DecisionFastPath) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.down = False
        self.seen: Counter[tuple[str, int]] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        response = await self.inner.handle_async_request(request)
        self.seen[(request.url.path.rsplit("/", 1)[-1], response.status_code)] += 1
        return response


class Clocks:
    """One instant for the decider's allocation store and the SDK."""

    def __init__(self, app: DecisionFastPath) -> None:
        self.now = T0 + 5.0
        rt = runtime_of(app.api)
        assert rt is not None
        rt.allocations.clock = self

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def decider(
    decider_settings: SettingsFactory, ns: str
) -> AsyncIterator[tuple[httpx.AsyncClient, DecisionFastPath, str]]:
    exp = f"{ns}cta"
    async with serve_decider(decider_settings()) as (c, app):
        r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ARMS})
        assert r.status_code == 201, r.text
        yield c, app, exp


def local_client(
    app: DecisionFastPath, clock: Callable[[], float], **settings: float
) -> tuple[AsyncMabClient, Partition]:
    transport = Partition(app)
    mab = AsyncMabClient(
        "http://decider",
        transport=transport,
        local=True,
        local_settings=LocalSettings(**settings),  # type: ignore[arg-type]
        retry=RetryPolicy(max_attempts=1),
    )
    assert mab.local is not None
    mab.local.clock = clock
    return mab, transport


async def until(cond: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_first_fetch_refresh_by_etag_and_at_the_next_version(
    decider: tuple[httpx.AsyncClient, DecisionFastPath, str],
) -> None:
    """Scenario: a local client decides; its allocation is asked again before the
    version ends, then after the epoch rolls over.
    We expect: one fetch (200) at the first decision, decisions equal to the rule over
    the served allocation, a 304 keeping the same copy, then the next version fetched
    in the background and used by the next decisions."""
    c, app, exp = decider
    clock = Clocks(app)
    mab, transport = local_client(app, clock, refresh_delay_s=0.0)
    served = AllocationPublic.model_validate((await c.get(f"/experiments/{exp}/allocation")).json())
    first = [await mab.decide(exp, f"u{i}") for i in range(50)]
    rule = allocation_of(served)
    assert first == [rule.choose(f"u{i}") for i in range(50)]
    assert transport.seen[("allocation", 200)] == 1
    local = mab.local
    assert local is not None
    held = local.held[exp]

    held.refresh_at = clock.now  # due now: the same version, asked with its ETag
    mab._wake.set()
    await until(lambda: transport.seen[("allocation", 304)] == 1, "a 304")
    assert local.held[exp] is held
    assert held.refresh_at >= served.valid_until

    clock.now = served.valid_until + 1.0
    mab._wake.set()
    await until(lambda: local.held[exp].allocation.version == served.version + 1, "next version")
    assert transport.seen[("allocation", 200)] == 2
    later = await mab.decide(exp, "u1")
    assert later.version == served.version + 1
    await mab.aclose()
    assert local.metrics.sent == 51
    assert transport.seen[("exposures", 200)] >= 1


async def test_keeps_deciding_while_unreachable_bounded_and_catches_up(
    decider: tuple[httpx.AsyncClient, DecisionFastPath, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario: after its first fetch the decider becomes unreachable across an epoch
    while the storefront keeps deciding, more than the buffer holds; then it is back.
    We expect: every decision served from the held allocation, the client stale with
    one warning, the oldest exposures dropped and counted, and after recovery the kept
    ones accepted, the client fresh again."""
    _c, app, exp = decider
    clock = Clocks(app)
    mab, transport = local_client(
        app, clock, flush_size=10, max_buffer=40, flush_interval_s=0.05, refresh_delay_s=0.0
    )
    caplog.set_level(logging.WARNING, "mab_client")
    await mab.decide(exp, "first")
    local = mab.local
    assert local is not None
    version = local.held[exp].allocation.version

    transport.down = True
    clock.now += 60.0  # the version ends: the refresh fails
    for i in range(100):
        d = await mab.decide(exp, f"u{i}")
        assert d.version == version
        await asyncio.sleep(0)  # let the worker try
    await until(lambda: local.metrics.stale and local.metrics.flush_failures > 0, "stale")
    assert len(local.buffer) == 40
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1

    transport.down = False
    clock.now += 60.0  # past the back-off of both
    mab._wake.set()
    await until(lambda: not local.buffer and not local.metrics.stale, "caught up")
    # The buffer empties when the worker takes the last batch, before the server answers
    # it: flush returns once that batch in flight is sent too.
    await mab.flush()
    metrics = local.metrics
    assert metrics.decisions == 101
    assert metrics.sent + metrics.dropped == 101
    assert metrics.dropped == 101 - 40
    assert local.held[exp].allocation.version == version + 2
    await mab.aclose()


async def test_close_flushes_what_is_buffered(
    decider: tuple[httpx.AsyncClient, DecisionFastPath, str],
) -> None:
    """Scenario: fewer exposures than a batch, a flush interval longer than the test.
    We expect: nothing sent until close, then all of them, in one request."""
    _c, app, exp = decider
    mab, transport = local_client(app, Clocks(app), flush_interval_s=3600.0)
    for i in range(25):
        await mab.decide(exp, f"u{i}")
    await asyncio.sleep(0.1)
    assert transport.seen[("exposures", 200)] == 0
    await mab.aclose()
    local = mab.local
    assert local is not None
    assert (local.metrics.sent, transport.seen[("exposures", 200)]) == (25, 1)


def test_sync_client_without_a_server_fails_the_first_decision_cleanly() -> None:
    """A local client whose decider was never reached has nothing to decide from: the
    first decision raises (nothing buffered), and close does not hang."""
    with MabClient(
        "http://127.0.0.1:9", local=True, retry=RetryPolicy(max_attempts=1), timeout=2.0
    ) as mab:
        with pytest.raises(MabTransportError):
            mab.decide("cta", "visitor-1")
        assert mab.local_metrics.decisions == 0

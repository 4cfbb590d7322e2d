"""``AsyncMabClient``: :class:`~mab_client.client.MabClient` for asyncio, on the same
:mod:`mab_client.calls` and retry rule (:mod:`mab_client._shared`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Self, TypeVar, overload

import httpx
from tenacity import AsyncRetrying

from mab_client import calls
from mab_client._shared import (
    BACKGROUND_ERRORS,
    ClientBase,
    RetryRule,
    pool_args,
    request_args,
)
from mab_client.assignment import LocalDecision
from mab_client.calls import Call, RetryPolicy
from mab_client.errors import MabTransportError
from mab_client.local import Held, LocalSettings
from mab_client.models import Decision

T = TypeVar("T")
log = logging.getLogger("mab_client")


class AsyncMabClient(ClientBase[httpx.AsyncClient]):
    """Asynchronous client (an async storefront, the demo traffic, the e2e tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
        headers: Mapping[str, str] | None = None,
        seed: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        local: bool = False,
        local_settings: LocalSettings | None = None,
    ) -> None:
        http = httpx.AsyncClient(
            transport=transport,
            limits=limits or httpx.Limits(),
            **pool_args(base_url, api_key, headers, timeout),
        )
        super().__init__(http, retry, seed, local, local_settings)
        self._sleep = sleep
        self._first_fetch = asyncio.Lock()
        #: As the sync client's: held while a batch is out of the buffer and being sent.
        self._flushing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        if self.local is not None:
            self.local.wake = self._wake.set

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the local worker, flush the exposures still buffered, close the pool.

        The worker is cancelled only once it holds no batch (``_flushing`` taken first):
        cancelled mid-send, its batch would come back to the buffer but the server may
        have logged it already, and the resend would count it as a duplicate, not sent.
        A refresh in flight is simply abandoned; nothing depends on it any more."""
        async with self._flushing:
            if self._worker is not None:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
                self._worker = None
            if self.local is not None:
                while self.local.buffer and await self._send_batch():
                    pass
                if self.local.buffer:
                    log.warning("%d exposures not sent at close", len(self.local.buffer))
        await self._http.aclose()

    # -- local mode (the sync client's, as coroutines) ---------------------------------
    async def _held(self, experiment_id: str) -> Held:
        local = self.local
        assert local is not None
        async with self._first_fetch:
            held = local.held.get(experiment_id)
            if held is None:
                answer = await self.run(calls.allocation(experiment_id))
                held = local.fetched(experiment_id, answer.allocation, answer.etag)
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._work())
        return held

    async def _work(self) -> None:
        local = self.local
        assert local is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), local.next_wake(local.clock()))
            self._wake.clear()
            for exp in local.refresh_due(local.clock()):
                fetch = await self._outcome(calls.allocation(exp, local.held[exp].etag))
                local.refreshed(exp, fetch)
            while local.flush_due() and await self._flush_one():
                pass

    async def _outcome(self, call: Call[T]) -> T | Exception:
        try:
            return await self.run(call)
        except BACKGROUND_ERRORS as exc:
            return exc

    async def _flush_one(self) -> bool:
        """Send one batch; ``False`` when it failed (put back for later)."""
        async with self._flushing:
            return await self._send_batch()

    async def _send_batch(self) -> bool:
        """:meth:`LocalState.flush_steps` driven with awaited sends, for a caller holding
        ``_flushing``. Closed on the way out: a cancelled send puts its batch back."""
        assert self.local is not None
        steps = self.local.flush_steps()
        try:
            items = next(steps)
            while True:
                outcome = await self._outcome(calls.exposures(items))
                items = steps.send(outcome)
        except StopIteration as done:
            return bool(done.value)
        finally:
            steps.close()

    async def flush(self) -> None:
        """Send every exposure decided so far, including a batch the worker is sending,
        before returning (raises when the server cannot take them; they stay
        buffered)."""
        local = self.local
        if local is None:
            return
        async with self._flushing:
            while local.buffer:
                if not await self._send_batch():
                    raise MabTransportError(f"{len(local.buffer)} exposures not sent; kept")

    async def run(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as its rule allows) and parse the answer."""
        rule = RetryRule(call, self.retry, self._rng)
        retrying = AsyncRetrying(sleep=self._sleep, **rule.tenacity_args())
        try:
            response: httpx.Response = await retrying(
                self._http.request, **request_args(call, self._http.timeout)
            )
        except httpx.TransportError as exc:
            raise rule.refused(exc) from None
        return call.result(response)

    # -- API (the calls of ClientBase, and decide) ------------------------------------
    @overload
    async def decide(self, experiment_id: str) -> Decision: ...
    @overload
    async def decide(self, experiment_id: str, unit_id: str) -> LocalDecision: ...
    async def decide(
        self, experiment_id: str, unit_id: str | None = None
    ) -> Decision | LocalDecision:
        """See :meth:`MabClient.decide`."""
        if unit_id is None:
            return await self.run(calls.decide(experiment_id))
        local = self._local_for(experiment_id)
        decision = local.decide(experiment_id, unit_id)
        while decision is None:
            await self._held(experiment_id)
            decision = local.decide(experiment_id, unit_id)
        return decision

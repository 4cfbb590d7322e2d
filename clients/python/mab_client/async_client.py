"""``AsyncMabClient``: :class:`~mab_client.client.MabClient` for asyncio, on the same
:mod:`mab_client.calls` and retry rule (:mod:`mab_client._shared`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, overload

import httpx
from tenacity import AsyncRetrying

from mab_client import calls
from mab_client._shared import (
    BACKGROUND_ERRORS,
    RetryRule,
    headers_for,
    local_state,
    not_local,
    request_args,
    timeout_of,
)
from mab_client.assignment import LocalDecision
from mab_client.calls import Call, RetryPolicy
from mab_client.errors import (
    MabTransportError,
)
from mab_client.local import Held, LocalMetrics, LocalSettings
from mab_client.models import (
    Decision,
    Evaluation,
    Experiment,
    Ready,
    RewardItem,
    RewardReceipt,
    Stats,
    StrategyConfig,
    Timeseries,
)

T = TypeVar("T")
log = logging.getLogger("mab_client")


class AsyncMabClient:
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
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers_for(api_key, headers),
            timeout=timeout_of(timeout),
            transport=transport,
            limits=limits or httpx.Limits(),
        )
        #: Local mode (``local=True``): held allocations, the exposure buffer, metrics.
        self.local = local_state(local, local_settings, seed)
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

    @property
    def base_url(self) -> str:
        """The API's base URL, as the client sends to it."""
        return str(self._http.base_url).rstrip("/")

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
    @property
    def local_metrics(self) -> LocalMetrics:
        """Local mode's counters and ``stale`` flag."""
        if self.local is None:
            raise not_local("this client")
        return self.local.metrics

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

    # -- API ---------------------------------------------------------------------------
    async def health(self) -> bool:
        return await self.run(calls.health())

    async def ready(self) -> Ready:
        return await self.run(calls.ready())

    async def create_experiment(
        self,
        experiment_id: str,
        arm_ids: Sequence[str],
        strategy: str | None = None,
        strategy_params: Mapping[str, Any] | None = None,
    ) -> Experiment:
        return await self.run(
            calls.create_experiment(experiment_id, arm_ids, strategy, strategy_params)
        )

    async def get_experiment(self, experiment_id: str) -> Experiment:
        return await self.run(calls.get_experiment(experiment_id))

    async def list_experiments(self, offset: int = 0, limit: int = 100) -> list[Experiment]:
        return await self.run(calls.list_experiments(offset, limit))

    async def add_arms(self, experiment_id: str, arm_ids: Sequence[str]) -> Experiment:
        return await self.run(calls.add_arms(experiment_id, arm_ids))

    async def set_strategy(
        self,
        experiment_id: str,
        strategy: str,
        strategy_params: Mapping[str, Any] | None = None,
    ) -> StrategyConfig:
        return await self.run(calls.set_strategy(experiment_id, strategy, strategy_params))

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
        local = self.local
        if local is None:
            raise not_local(experiment_id)
        decision = local.decide(experiment_id, unit_id)
        while decision is None:
            await self._held(experiment_id)
            decision = local.decide(experiment_id, unit_id)
        return decision

    async def reward(
        self,
        experiment_id: str,
        arm_id: str,
        reward: float,
        *,
        decision_id: str | None = None,
        event_id: str | None = None,
        user_context: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> RewardReceipt:
        item = calls.reward_item(
            experiment_id, arm_id, reward, decision_id, event_id, user_context, metrics
        )
        return await self.run(calls.reward(item))

    async def reward_for(
        self, decision: Decision, reward: float, user_context: Mapping[str, Any] | None = None
    ) -> RewardReceipt:
        """The reward of ``decision``, its decision id carried through."""
        item = calls.reward_for(decision, reward, user_context)
        return await self.run(calls.reward(item))

    async def bulk_rewards(self, items: Sequence[RewardItem]) -> int:
        return await self.run(calls.bulk_rewards(items))

    async def stats(self, experiment_id: str) -> Stats:
        return await self.run(calls.stats(experiment_id))

    async def timeseries(
        self,
        experiment_id: str,
        bucket: str = "hour",
        start: float | str | None = None,
        end: float | str | None = None,
    ) -> Timeseries:
        return await self.run(calls.timeseries(experiment_id, bucket, start, end))

    async def evaluate(
        self,
        experiment_id: str,
        strategy: str,
        params: Mapping[str, Any] | None = None,
        missing_reward: str = "drop",
    ) -> Evaluation:
        return await self.run(calls.evaluate(experiment_id, strategy, params, missing_reward))

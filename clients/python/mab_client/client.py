"""``MabClient`` (sync) and ``AsyncMabClient`` (async): the decider's API for storefronts.

Both run the same :mod:`mab_client.calls`; a call is retried with exponential backoff and
jitter only when sending it twice has the effect of once (see :class:`~mab_client.calls.
Retry`), every request has a bounded timeout, and every error is typed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from mab_client import calls
from mab_client.calls import RETRY_ERRORS, RETRY_STATUSES, Call, Retry, RetryPolicy, retry_after_s
from mab_client.errors import MabTransportError
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

#: Connect fast (a dead host is not worth waiting for), read a little longer (a reward
#: waits for Kafka's ack, bounded server-side by 5 s).
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=2.0)


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": "mab-client/0.1", **(extra or {})}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    if timeout is None:
        return DEFAULT_TIMEOUT
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def _per_call(call: Call[Any], base: httpx.Timeout) -> dict[str, Any]:
    """A call that needs longer (evaluation) reads for at least its own timeout; connect
    and the other phases keep the client's bounds."""
    if call.timeout_s is None or base.read is None:
        return {}
    read = max(base.read, call.timeout_s)
    return {"timeout": httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)}


class _Attempts:
    """The retry decision of one call, shared by both clients."""

    def __init__(self, call: Call[Any], policy: RetryPolicy, rng: random.Random) -> None:
        self.call = call
        self.policy = policy
        self.rng = rng
        self.failures = 0

    def _budget_left(self) -> bool:
        return self.failures < self.policy.max_attempts

    def after_response(self, response: httpx.Response) -> float | None:
        """Seconds to wait before trying again, or ``None`` when this answer is final."""
        if self.call.retry is Retry.NONE or response.status_code not in RETRY_STATUSES:
            return None
        self.failures += 1
        if not self._budget_left():
            return None
        wait = self.policy.delay(self.failures, self.rng, retry_after_s(response))
        log.info(
            "%s %s: HTTP %d, retry %d in %.2fs",
            self.call.method,
            self.call.path,
            response.status_code,
            self.failures,
            wait,
        )
        return wait

    def after_error(self, exc: httpx.TransportError) -> float:
        """Seconds to wait, or raise :class:`MabTransportError` when the call may not be
        resent (not idempotent) or the attempts are used up."""
        self.failures += 1
        where = f"{self.call.method} {self.call.path}"
        if not isinstance(exc, RETRY_ERRORS):
            raise MabTransportError(f"{where}: {exc!r}")
        if self.call.retry is not Retry.IDEMPOTENT:
            raise MabTransportError(f"{where}: {exc!r} (not retried: may have been applied)")
        if not self._budget_left():
            raise MabTransportError(f"{where}: {exc!r} after {self.failures} attempts")
        wait = self.policy.delay(self.failures, self.rng)
        log.info("%s: %r, retry %d in %.2fs", where, exc, self.failures, wait)
        return wait


class MabClient:
    """Synchronous client (a storefront back end's request thread).

    >>> with MabClient("http://decider:8000", api_key="...") as mab:  # doctest: +SKIP
    ...     d = mab.decide("cta-button-test")
    ...     mab.reward_for(d, 1.0)
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url,
            headers=_headers(api_key, headers),
            timeout=_timeout(timeout),
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """The API's base URL, as the client sends to it."""
        return str(self._http.base_url).rstrip("/")

    def close(self) -> None:
        self._http.close()

    def run(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as its rule allows) and parse the answer."""
        attempts = _Attempts(call, self.retry, self._rng)
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    **_per_call(call, self._http.timeout),
                )
            except httpx.TransportError as exc:
                self._sleep(attempts.after_error(exc))
                continue
            wait = attempts.after_response(response)
            if wait is None:
                return call.result(response)
            self._sleep(wait)

    # -- API ---------------------------------------------------------------------------
    def health(self) -> bool:
        return self.run(calls.health())

    def ready(self) -> Ready:
        return self.run(calls.ready())

    def create_experiment(
        self,
        experiment_id: str,
        arm_ids: Sequence[str],
        strategy: str | None = None,
        strategy_params: Mapping[str, Any] | None = None,
    ) -> Experiment:
        return self.run(calls.create_experiment(experiment_id, arm_ids, strategy, strategy_params))

    def get_experiment(self, experiment_id: str) -> Experiment:
        return self.run(calls.get_experiment(experiment_id))

    def list_experiments(self, offset: int = 0, limit: int = 100) -> list[Experiment]:
        return self.run(calls.list_experiments(offset, limit))

    def add_arms(self, experiment_id: str, arm_ids: Sequence[str]) -> Experiment:
        return self.run(calls.add_arms(experiment_id, arm_ids))

    def set_strategy(
        self,
        experiment_id: str,
        strategy: str,
        strategy_params: Mapping[str, Any] | None = None,
    ) -> StrategyConfig:
        return self.run(calls.set_strategy(experiment_id, strategy, strategy_params))

    def decide(self, experiment_id: str) -> Decision:
        return self.run(calls.decide(experiment_id))

    def reward(
        self,
        experiment_id: str,
        arm_id: str,
        reward: float,
        *,
        decision_id: str | None = None,
        event_id: str | None = None,
        user_context: Mapping[str, Any] | None = None,
    ) -> RewardReceipt:
        item = calls.reward_item(experiment_id, arm_id, reward, decision_id, event_id, user_context)
        return self.run(calls.reward(item))

    def reward_for(
        self, decision: Decision, reward: float, user_context: Mapping[str, Any] | None = None
    ) -> RewardReceipt:
        """The reward of ``decision``, its decision id carried through."""
        item = RewardItem.for_decision(decision, reward, user_context)
        return self.run(calls.reward(item))

    def bulk_rewards(self, items: Sequence[RewardItem]) -> int:
        return self.run(calls.bulk_rewards(items))

    def stats(self, experiment_id: str) -> Stats:
        return self.run(calls.stats(experiment_id))

    def timeseries(
        self,
        experiment_id: str,
        bucket: str = "hour",
        start: float | str | None = None,
        end: float | str | None = None,
    ) -> Timeseries:
        return self.run(calls.timeseries(experiment_id, bucket, start, end))

    def evaluate(
        self,
        experiment_id: str,
        strategy: str,
        params: Mapping[str, Any] | None = None,
        missing_reward: str = "drop",
    ) -> Evaluation:
        return self.run(calls.evaluate(experiment_id, strategy, params, missing_reward))


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
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key, headers),
            timeout=_timeout(timeout),
            transport=transport,
            limits=limits or httpx.Limits(),
        )

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
        await self._http.aclose()

    async def run(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as its rule allows) and parse the answer."""
        attempts = _Attempts(call, self.retry, self._rng)
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    **_per_call(call, self._http.timeout),
                )
            except httpx.TransportError as exc:
                await self._sleep(attempts.after_error(exc))
                continue
            wait = attempts.after_response(response)
            if wait is None:
                return call.result(response)
            await self._sleep(wait)

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

    async def decide(self, experiment_id: str) -> Decision:
        return await self.run(calls.decide(experiment_id))

    async def reward(
        self,
        experiment_id: str,
        arm_id: str,
        reward: float,
        *,
        decision_id: str | None = None,
        event_id: str | None = None,
        user_context: Mapping[str, Any] | None = None,
    ) -> RewardReceipt:
        item = calls.reward_item(experiment_id, arm_id, reward, decision_id, event_id, user_context)
        return await self.run(calls.reward(item))

    async def reward_for(
        self, decision: Decision, reward: float, user_context: Mapping[str, Any] | None = None
    ) -> RewardReceipt:
        """The reward of ``decision``, its decision id carried through."""
        item = RewardItem.for_decision(decision, reward, user_context)
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

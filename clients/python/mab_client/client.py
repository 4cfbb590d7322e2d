"""``MabClient`` (sync) and ``AsyncMabClient`` (async): the decider's API for storefronts.

Both run the same :mod:`mab_client.calls`; a call is retried with exponential backoff and
jitter only when sending it twice has the effect of once (see :class:`~mab_client.calls.
Retry`), every request has a bounded timeout, and every error is typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, overload

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, stop_after_attempt

from mab_client import calls
from mab_client.assignment import LocalDecision
from mab_client.calls import RETRY_ERRORS, RETRY_STATUSES, Call, Retry, RetryPolicy, retry_after_s
from mab_client.errors import (
    InvalidRequestError,
    MabError,
    MabTransportError,
)
from mab_client.local import Held, LocalMetrics, LocalSettings, LocalState, drive
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


def _request_args(call: Call[Any], base: httpx.Timeout) -> dict[str, Any]:
    """The ``httpx`` request of ``call``, the same for both clients. A call that needs
    longer (evaluation) reads for at least its own timeout; connect and the other phases
    keep the client's bounds."""
    args: dict[str, Any] = {
        "method": call.method,
        "url": call.path,
        "params": call.params,
        "json": call.json,
    }
    if call.headers is not None:
        args["headers"] = dict(call.headers)
    if call.timeout_s is not None and base.read is not None:
        read = max(base.read, call.timeout_s)
        args["timeout"] = httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)
    return args


def _not_local(experiment_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        "decide",
        [
            {
                "loc": ["unit_id"],
                "msg": f"a decision for a unit of {experiment_id!r} needs a client made with "
                "local=True (decided in-process from the experiment's allocation)",
                "type": "local_mode_off",
            }
        ],
    )


def _local_state(on: bool, settings: LocalSettings | None, seed: int | None) -> LocalState | None:
    return LocalState(settings or LocalSettings(), rng=random.Random(seed)) if on else None


#: What a failed background call may raise: logged and counted, never fatal to the worker.
_BACKGROUND_ERRORS = (MabError, httpx.HTTPError)


class _RetryRule:
    """One call's retry decision as tenacity hooks, shared by both clients.

    tenacity runs the attempts, counts them and sleeps (with the client's injectable
    ``sleep``); what is retried, and how long to wait, stays the SDK's documented rule:
    a retryable status for any call that allows retries, a transport error only for
    idempotent calls, equal jitter from the client's generator, ``Retry-After`` honoured.
    """

    def __init__(self, call: Call[Any], policy: RetryPolicy, rng: random.Random) -> None:
        self.call = call
        self.policy = policy
        self.rng = rng
        self.where = f"{call.method} {call.path}"

    def tenacity_args(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.policy.max_attempts),
            "retry": self.retry,
            "wait": self.wait,
            "before_sleep": self.log,
            "retry_error_callback": self.exhausted,
        }

    def retry(self, state: RetryCallState) -> bool:
        outcome = state.outcome
        assert outcome is not None
        if outcome.failed:
            exc = outcome.exception()
            return isinstance(exc, RETRY_ERRORS) and self.call.retry is Retry.IDEMPOTENT
        response: httpx.Response = outcome.result()
        return self.call.retry is not Retry.NONE and response.status_code in RETRY_STATUSES

    def wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        assert outcome is not None
        after = None if outcome.failed else retry_after_s(outcome.result())
        return self.policy.delay(state.attempt_number, self.rng, after)

    def log(self, state: RetryCallState) -> None:
        outcome = state.outcome
        assert outcome is not None
        what = (
            repr(outcome.exception()) if outcome.failed else f"HTTP {outcome.result().status_code}"
        )
        wait = state.upcoming_sleep
        log.info("%s: %s, retry %d in %.2fs", self.where, what, state.attempt_number, wait)

    def exhausted(self, state: RetryCallState) -> httpx.Response:
        """The last answer once the attempts are used up (a 503 is then an error the
        caller sees), or :class:`MabTransportError` when there was none."""
        outcome = state.outcome
        assert outcome is not None
        if outcome.failed:
            raise MabTransportError(
                f"{self.where}: {outcome.exception()!r} after {state.attempt_number} attempts"
            )
        response: httpx.Response = outcome.result()
        return response

    def refused(self, exc: httpx.TransportError) -> MabTransportError:
        """A transport error that was not retried: never worth it, or maybe applied."""
        if isinstance(exc, RETRY_ERRORS) and self.call.retry is not Retry.IDEMPOTENT:
            return MabTransportError(f"{self.where}: {exc!r} (not retried: may have been applied)")
        return MabTransportError(f"{self.where}: {exc!r}")


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
        local: bool = False,
        local_settings: LocalSettings | None = None,
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
        #: Local mode (``local=True``): held allocations, the exposure buffer, metrics.
        self.local = _local_state(local, local_settings, seed)
        self._first_fetch = threading.Lock()
        #: Held while a batch is out of the buffer and being sent: one flush at a time
        #: (two takers would miscount the sequence gaps as drops), and ``flush``/``close``
        #: wait for the worker's batch in flight instead of seeing an empty buffer.
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        if self.local is not None:
            self.local.wake = self._wake.set

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
        """Stop the local worker, flush the exposures still buffered, close the pool."""
        if self._worker is not None:
            self._stopping.set()
            self._wake.set()
            self._worker.join()
            self._worker = None
        if self.local is not None:
            with self._flushing:
                while self.local.buffer and self._send_batch():
                    pass
            if self.local.buffer:
                log.warning("%d exposures not sent at close", len(self.local.buffer))
        self._http.close()

    # -- local mode --------------------------------------------------------------------
    @property
    def local_metrics(self) -> LocalMetrics:
        """Local mode's counters and ``stale`` flag (:class:`InvalidRequestError` when
        the client is not local)."""
        if self.local is None:
            raise _not_local("this client")
        return self.local.metrics

    def _held(self, experiment_id: str) -> Held:
        """The experiment's allocation; the first call fetches it (raising what the
        fetch raises: there is nothing to decide from yet) and starts the worker."""
        local = self.local
        assert local is not None
        with self._first_fetch:
            held = local.held.get(experiment_id)
            if held is None:
                answer = self.run(calls.allocation(experiment_id))
                held = local.fetched(experiment_id, answer.allocation, answer.etag)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="mab-client-local", daemon=True
                )
                self._worker.start()
        return held

    def _work(self) -> None:
        """The background worker: refresh allocations when due, flush exposures."""
        local = self.local
        assert local is not None
        while not self._stopping.is_set():
            self._wake.wait(local.next_wake(local.clock()))
            self._wake.clear()
            for exp in local.refresh_due(local.clock()):
                fetch = self._outcome(calls.allocation(exp, local.held[exp].etag))
                local.refreshed(exp, fetch)
            while not self._stopping.is_set() and local.flush_due() and self._flush_one():
                pass

    def _outcome(self, call: Call[T]) -> T | Exception:
        """A background call's answer, or what it raised (the worker never dies of it)."""
        try:
            return self.run(call)
        except _BACKGROUND_ERRORS as exc:
            return exc

    def _flush_one(self) -> bool:
        """Send one batch; ``False`` when it failed (put back for later)."""
        with self._flushing:
            return self._send_batch()

    def _send_batch(self) -> bool:
        """:meth:`_flush_one` for a caller holding ``_flushing``."""
        assert self.local is not None
        return drive(self.local.flush_steps(), lambda items: self._outcome(calls.exposures(items)))

    def flush(self) -> None:
        """Send every exposure decided so far, including a batch the worker is sending,
        before returning (``MabTransportError`` and the like when the server cannot take
        them; they stay buffered)."""
        local = self.local
        if local is None:
            return
        with self._flushing:
            while local.buffer:
                if not self._send_batch():
                    raise MabTransportError(f"{len(local.buffer)} exposures not sent; kept")

    def run(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as its rule allows) and parse the answer."""
        rule = _RetryRule(call, self.retry, self._rng)
        retrying = Retrying(sleep=self._sleep, **rule.tenacity_args())
        try:
            response = retrying(self._http.request, **_request_args(call, self._http.timeout))
        except httpx.TransportError as exc:
            raise rule.refused(exc) from None
        return call.result(response)

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

    @overload
    def decide(self, experiment_id: str) -> Decision: ...
    @overload
    def decide(self, experiment_id: str, unit_id: str) -> LocalDecision: ...
    def decide(self, experiment_id: str, unit_id: str | None = None) -> Decision | LocalDecision:
        """Without ``unit_id``: the server's decision (``GET /decision``). With it, in
        local mode: the unit's arm under the allocation held, decided in-process by the
        assignment rule, its exposure buffered for the next flush."""
        if unit_id is None:
            return self.run(calls.decide(experiment_id))
        local = self.local
        if local is None:
            raise _not_local(experiment_id)
        decision = local.decide(experiment_id, unit_id)
        while decision is None:
            self._held(experiment_id)
            decision = local.decide(experiment_id, unit_id)
        return decision

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
        item = calls.reward_for(decision, reward, user_context)
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
        local: bool = False,
        local_settings: LocalSettings | None = None,
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
        #: Local mode (``local=True``): held allocations, the exposure buffer, metrics.
        self.local = _local_state(local, local_settings, seed)
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
            raise _not_local("this client")
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
        except _BACKGROUND_ERRORS as exc:
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
        rule = _RetryRule(call, self.retry, self._rng)
        retrying = AsyncRetrying(sleep=self._sleep, **rule.tenacity_args())
        try:
            response: httpx.Response = await retrying(
                self._http.request, **_request_args(call, self._http.timeout)
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
            raise _not_local(experiment_id)
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
    ) -> RewardReceipt:
        item = calls.reward_item(experiment_id, arm_id, reward, decision_id, event_id, user_context)
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

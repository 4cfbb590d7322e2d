"""``MabClient`` (sync; ``AsyncMabClient`` for asyncio is :mod:`mab_client.async_client`):
the decider's API for storefronts.

Both run the same :mod:`mab_client.calls`; a call is retried with exponential backoff and
jitter only when sending it twice has the effect of once (see :class:`~mab_client.calls.
Retry`), every request has a bounded timeout, and every error is typed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, overload

import httpx
from tenacity import Retrying

from mab_client import calls
from mab_client._shared import (
    BACKGROUND_ERRORS,
    DEFAULT_TIMEOUT,
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
from mab_client.local import Held, LocalMetrics, LocalSettings, drive
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
            headers=headers_for(api_key, headers),
            timeout=timeout_of(timeout),
            transport=transport,
        )
        #: Local mode (``local=True``): held allocations, the exposure buffer, metrics.
        self.local = local_state(local, local_settings, seed)
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
            raise not_local("this client")
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
        except BACKGROUND_ERRORS as exc:
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
        rule = RetryRule(call, self.retry, self._rng)
        retrying = Retrying(sleep=self._sleep, **rule.tenacity_args())
        try:
            response = retrying(self._http.request, **request_args(call, self._http.timeout))
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
            raise not_local(experiment_id)
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
        metrics: Mapping[str, float] | None = None,
    ) -> RewardReceipt:
        item = calls.reward_item(
            experiment_id, arm_id, reward, decision_id, event_id, user_context, metrics
        )
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


# Re-exported: ``from mab_client.client import AsyncMabClient`` keeps working.
from mab_client.async_client import AsyncMabClient  # noqa: E402

__all__ = ["DEFAULT_TIMEOUT", "AsyncMabClient", "MabClient"]

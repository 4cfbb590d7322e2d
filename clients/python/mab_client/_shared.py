"""What both clients share: request arguments, timeouts, the retry rule they hand to
tenacity (:class:`RetryRule`), their state and their API (:class:`ClientBase`), so
``MabClient`` and ``AsyncMabClient`` differ only in how they wait."""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable, Coroutine, Mapping
from types import MethodType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

import httpx
from tenacity import RetryCallState, stop_after_attempt

from mab_client import calls
from mab_client.calls import RETRY_ERRORS, RETRY_STATUSES, Call, Retry, RetryPolicy, retry_after_s
from mab_client.errors import (
    InvalidRequestError,
    MabError,
    MabTransportError,
)
from mab_client.local import LocalMetrics, LocalSettings, LocalState

T = TypeVar("T")
P = ParamSpec("P")
#: The HTTP pool of a client: ``httpx.Client`` (sync) or ``httpx.AsyncClient``.
H = TypeVar("H", httpx.Client, httpx.AsyncClient)
log = logging.getLogger("mab_client")

#: Connect fast (a dead host is not worth waiting for), read a little longer (a reward
#: waits for Kafka's ack, bounded server-side by 5 s).
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=2.0)


def headers_for(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": "mab-client/0.1", **(extra or {})}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def timeout_of(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    if timeout is None:
        return DEFAULT_TIMEOUT
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def pool_args(
    base_url: str,
    api_key: str | None,
    headers: Mapping[str, str] | None,
    timeout: float | httpx.Timeout | None,
) -> dict[str, Any]:
    """The arguments of either client's ``httpx`` pool but its transport: where it sends,
    with which headers, and its bounded timeout."""
    return {
        "base_url": base_url,
        "headers": headers_for(api_key, headers),
        "timeout": timeout_of(timeout),
    }


def request_args(call: Call[Any], base: httpx.Timeout) -> dict[str, Any]:
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


def not_local(experiment_id: str) -> InvalidRequestError:
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


def local_state(on: bool, settings: LocalSettings | None, seed: int | None) -> LocalState | None:
    return LocalState(settings or LocalSettings(), rng=random.Random(seed)) if on else None


#: What a failed background call may raise: logged and counted, never fatal to the worker.
BACKGROUND_ERRORS = (MabError, httpx.HTTPError)


class RetryRule:
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


class SyncRunner(Protocol):
    """A client whose :meth:`run` answers when it returns (``MabClient``)."""

    def run(self, call: Call[T]) -> T: ...


class AsyncRunner(Protocol):
    """A client whose :meth:`run` is awaited (``AsyncMabClient``)."""

    async def run(self, call: Call[T]) -> T: ...


class Sends(Generic[P, T]):
    """An API method that runs what a :mod:`mab_client.calls` builder builds.

    The builder's parameters are the method's (type checkers see them through ``P``);
    read on a sync client it answers ``T``, on an async client it is a coroutine of
    ``T``, as the client's ``run`` is. So one table of calls serves both clients.
    """

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        def send(client: SyncRunner, *args: P.args, **kwargs: P.kwargs) -> T:
            return client.run(build(*args, **kwargs))

        async def send_async(client: AsyncRunner, *args: P.args, **kwargs: P.kwargs) -> T:
            return await client.run(build(*args, **kwargs))

        # What ``help()`` shows: the builder's parameters and documentation.
        params = inspect.signature(build).parameters.values()
        this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._signature = inspect.Signature([this, *params])
        self._doc = build.__doc__
        self._send = send
        self._send_async = send_async

    def __set_name__(self, owner: type[Any], name: str) -> None:
        methods: tuple[Any, ...] = (self._send, self._send_async)
        for method in methods:
            method.__name__ = name
            method.__qualname__ = f"{owner.__qualname__}.{name}"
            method.__signature__ = self._signature
            method.__doc__ = self._doc

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Callable[..., Any]: ...
    @overload
    def __get__(
        self, client: AsyncRunner, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: SyncRunner, owner: type[Any]) -> Callable[P, T]: ...
    def __get__(self, client: Any, owner: type[Any]) -> Any:
        async_run = inspect.iscoroutinefunction(getattr(owner, "run", None))
        method = self._send_async if async_run else self._send
        return method if client is None else MethodType(method, client)


class ClientBase(Generic[H]):
    """The part of both clients that does not wait: their pool, retry policy and local
    state, and every API call but ``decide`` (whose local path waits for a fetch)."""

    _http: H

    def __init__(
        self,
        http: H,
        retry: RetryPolicy | None,
        seed: int | None,
        local: bool,
        local_settings: LocalSettings | None,
    ) -> None:
        self._http = http
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        #: Local mode (``local=True``): held allocations, the exposure buffer, metrics.
        self.local = local_state(local, local_settings, seed)

    @property
    def base_url(self) -> str:
        """The API's base URL, as the client sends to it."""
        return str(self._http.base_url).rstrip("/")

    @property
    def local_metrics(self) -> LocalMetrics:
        """Local mode's counters and ``stale`` flag (:class:`InvalidRequestError` when
        the client is not local)."""
        return self._local_for("this client").metrics

    def _local_for(self, experiment_id: str) -> LocalState:
        """The local state, or :class:`InvalidRequestError` when the client is not local."""
        if self.local is None:
            raise not_local(experiment_id)
        return self.local

    # The API by the key each call needs (docs/security.md); ``decide`` is each client's.
    health = Sends(calls.health)
    ready = Sends(calls.ready)
    # admin
    create_experiment = Sends(calls.create_experiment)
    add_arms = Sends(calls.add_arms)
    set_strategy = Sends(calls.set_strategy)
    evaluate = Sends(calls.evaluate)
    # storefront
    reward = Sends(calls.reward)
    reward_for = Sends(calls.reward_for)
    bulk_rewards = Sends(calls.bulk_rewards)
    # reads
    get_experiment = Sends(calls.get_experiment)
    list_experiments = Sends(calls.list_experiments)
    stats = Sends(calls.stats)
    timeseries = Sends(calls.timeseries)

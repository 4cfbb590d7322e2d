"""What both clients share: request arguments, timeouts, and the retry rule they hand
to tenacity (:class:`RetryRule`), so ``MabClient`` and ``AsyncMabClient`` differ only in
how they wait."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
from tenacity import RetryCallState, stop_after_attempt

from mab_client.calls import RETRY_ERRORS, RETRY_STATUSES, Call, Retry, RetryPolicy, retry_after_s
from mab_client.errors import (
    InvalidRequestError,
    MabError,
    MabTransportError,
)
from mab_client.local import LocalSettings, LocalState

T = TypeVar("T")
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

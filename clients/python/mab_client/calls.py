"""What each API call sends, when it may be retried and how its answer is read.

Both clients (sync and async) run the same :class:`Call` objects, so the request shapes,
the retry rules and the response parsing exist once; only the sending loop differs.
Every body is built with the API's own request model (:mod:`mab_client.models`) and
every id in a path or query passes the server's id rule (:mod:`mab_client.ids`), so a
request the server would refuse with 422 fails here, before any network call, with
:class:`~mab_client.errors.InvalidRequestError`.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from mab_client.errors import InvalidRequestError, UnexpectedResponseError, error_for
from mab_client.ids import INVALID_ID, InvalidIdError, normalize_id
from mab_client.models import (
    AllocationPublic,
    ArmsAdd,
    ConfigUpdate,
    Decision,
    Evaluation,
    Experiment,
    ExperimentCreate,
    ExposureCreate,
    Ready,
    RewardItem,
    RewardReceipt,
    Stats,
    StrategyConfig,
    Timeseries,
    new_event_id,
)
from mab_client.paths import url_segment

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: Transport failures worth another attempt (a wrong URL scheme or proxy setup is not).
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

#: Statuses that mean "not applied, try again": the decider's 503, and what a proxy or
#: ingress in front of restarting pods answers.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class Retry(enum.Enum):
    """When a call may be sent again."""

    #: Never: the first answer is final.
    NONE = "none"
    #: Only after a retryable status: the server said it applied nothing (commands roll
    #: back on 503), but after a timeout the command may have been applied.
    UNAPPLIED = "unapplied"
    #: Also after a transport error or timeout: sending twice has the effect of once
    #: (reads; rewards, which carry an ``event_id`` the consumer deduplicates).
    IDEMPOTENT = "idempotent"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and per-wait delay."""

    max_attempts: int = 4
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError("need 0 <= backoff_base_s <= backoff_max_s")

    def delay(self, failures: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Wait before attempt ``failures + 1``: half fixed, half random ("equal jitter"),
        so clients that failed together do not retry together; a server's Retry-After
        is honoured up to ``backoff_max_s``."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** max(failures - 1, 0))
        wait = cap / 2 + rng.uniform(0, cap / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API call: the request, its success statuses, its retry rule and its parser."""

    method: str
    path: str
    parse: Callable[[Any], T]
    retry: Retry
    params: Mapping[str, str | int] | None = None
    json: Any = None
    #: Request headers of this call only (``If-None-Match``).
    headers: Mapping[str, str] | None = None
    ok: frozenset[int] = field(default_factory=lambda: frozenset({200}))
    #: Read timeout of this call in seconds, when it needs longer than the client's.
    timeout_s: float | None = None
    #: ``parse`` reads the whole response (status, headers), not only its JSON body.
    whole: bool = False

    def result(self, response: httpx.Response) -> T:
        """The parsed answer, or the typed error of an error status."""
        if response.status_code in self.ok:
            try:
                return self.parse(response if self.whole else response.json())
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                raise UnexpectedResponseError(
                    f"{self.method} {self.path}: HTTP {response.status_code} with an "
                    f"unexpected body ({exc.__class__.__name__}): {response.text[:300]!r}",
                    self.method,
                    self.path,
                ) from None
        raise error_for(response.status_code, _detail(response), self.method, self.path)


def retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, when the server sent a number."""
    raw = response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body


# ------------------------------------------------------------------------------ calls


def health() -> Call[bool]:
    return Call("GET", "/health", lambda b: b.get("status") == "ok", Retry.IDEMPOTENT)


def ready() -> Call[Ready]:
    """200 and 503 both carry the readiness body: not-ready is an answer, not an error."""
    return Call("GET", "/ready", Ready.model_validate, Retry.NONE, ok=frozenset({200, 503}))


def create_experiment(
    experiment_id: str,
    arm_ids: Sequence[str],
    strategy: str | None = None,
    strategy_params: Mapping[str, Any] | None = None,
) -> Call[Experiment]:
    fields: dict[str, Any] = {"experiment_id": experiment_id, "arm_ids": list(arm_ids)}
    if strategy is not None:
        fields["strategy"] = strategy
    if strategy_params is not None:
        fields["strategy_params"] = dict(strategy_params)
    return Call(
        "POST",
        "/experiments",
        Experiment.model_validate,
        Retry.UNAPPLIED,
        json=_body(ExperimentCreate, "POST /experiments", fields),
        ok=frozenset({201}),
    )


def get_experiment(experiment_id: str) -> Call[Experiment]:
    return Call(
        "GET",
        f"/experiments/{_segment(experiment_id)}",
        Experiment.model_validate,
        Retry.IDEMPOTENT,
    )


def list_experiments(offset: int = 0, limit: int = 100) -> Call[list[Experiment]]:
    return Call(
        "GET",
        "/experiments",
        lambda b: [Experiment.model_validate(e) for e in b],
        Retry.IDEMPOTENT,
        params={"offset": offset, "limit": limit},
    )


def add_arms(experiment_id: str, arm_ids: Sequence[str]) -> Call[Experiment]:
    return Call(
        "POST",
        f"/experiments/{_segment(experiment_id)}/arms",
        Experiment.model_validate,
        Retry.UNAPPLIED,
        json=_body(ArmsAdd, "POST /experiments/{id}/arms", {"arm_ids": list(arm_ids)}),
    )


def set_strategy(
    experiment_id: str, strategy: str, strategy_params: Mapping[str, Any] | None = None
) -> Call[StrategyConfig]:
    fields: dict[str, Any] = {"experiment_id": experiment_id, "strategy": strategy}
    if strategy_params is not None:
        fields["strategy_params"] = dict(strategy_params)
    body = _body(ConfigUpdate, "POST /config", fields)
    return Call("POST", "/config", StrategyConfig.model_validate, Retry.UNAPPLIED, json=body)


def decide(experiment_id: str) -> Call[Decision]:
    # A retried decision may leave the first one without a reward: harmless (decisions
    # without rewards are the norm), so decisions retry like reads.
    return Call(
        "GET",
        "/decision",
        Decision.model_validate,
        Retry.IDEMPOTENT,
        params={"experiment_id": _id(experiment_id)},
    )


def reward(item: RewardItem) -> Call[RewardReceipt]:
    return Call("POST", "/reward", RewardReceipt.model_validate, Retry.IDEMPOTENT, json=item.body())


def bulk_rewards(items: Sequence[RewardItem]) -> Call[int]:
    """``POST /rewards``: all items or none (422 lists the bad items); answers the count.

    Every item carries its own ``event_id``, so resending the whole batch after a
    timeout counts each reward once.
    """
    if not items:
        raise InvalidRequestError(
            "POST /rewards",
            [
                {
                    "loc": ["rewards"],
                    "msg": "bulk_rewards needs at least one reward",
                    "type": "too_short",
                }
            ],
        )
    return Call(
        "POST",
        "/rewards",
        lambda b: int(b["accepted"]),
        Retry.IDEMPOTENT,
        json={"rewards": [i.body() for i in items]},
    )


@dataclass(frozen=True, slots=True)
class AllocationFetch:
    """``GET /experiments/{id}/allocation``'s answer: the allocation and its ``ETag``, or
    ``allocation=None`` when the server said 304 (the copy named by the tag is current)."""

    allocation: AllocationPublic | None
    etag: str | None


def _allocation_fetch(response: httpx.Response) -> AllocationFetch:
    etag = response.headers.get("etag")
    if response.status_code == 304:
        return AllocationFetch(None, etag)
    return AllocationFetch(AllocationPublic.model_validate_json(response.content), etag)


def allocation(experiment_id: str, etag: str | None = None) -> Call[AllocationFetch]:
    """The current allocation version; with ``etag`` (the copy held), a bodyless 304
    while that copy is current."""
    return Call(
        "GET",
        f"/experiments/{_segment(experiment_id)}/allocation",
        _allocation_fetch,
        Retry.IDEMPOTENT,
        ok=frozenset({200, 304}),
        whole=True,
        headers=None if etag is None else {"If-None-Match": etag},
    )


def exposures(items: Sequence[ExposureCreate]) -> Call[tuple[int, int]]:
    """``POST /exposures``: ``(accepted, duplicates)``. Every item carries its exposure
    id, so resending a batch after a timeout logs nothing twice (idempotent)."""
    return Call(
        "POST",
        "/exposures",
        lambda b: (int(b["accepted"]), int(b["duplicates"])),
        Retry.IDEMPOTENT,
        json={"exposures": [i.model_dump(mode="json") for i in items]},
    )


def stats(experiment_id: str) -> Call[Stats]:
    return Call(
        "GET",
        f"/experiments/{_segment(experiment_id)}/stats",
        Stats.model_validate,
        Retry.IDEMPOTENT,
    )


def timeseries(
    experiment_id: str,
    bucket: str = "hour",
    start: float | str | None = None,
    end: float | str | None = None,
) -> Call[Timeseries]:
    params: dict[str, str | int] = {"bucket": bucket}
    if start is not None:
        params["from"] = str(start)
    if end is not None:
        params["to"] = str(end)
    return Call(
        "GET",
        f"/experiments/{_segment(experiment_id)}/timeseries",
        Timeseries.model_validate,
        Retry.IDEMPOTENT,
        params=params,
    )


#: Off-policy evaluation reads the event log: it may take far longer than a read.
EVALUATE_TIMEOUT_S = 120.0


def evaluate(
    experiment_id: str,
    strategy: str,
    params: Mapping[str, Any] | None = None,
    missing_reward: str = "drop",
) -> Call[Evaluation]:
    """Off-policy estimates of ``strategy`` on the experiment's logged decisions.

    Retried only on 503 ("not run"): after a timeout the server may still be reading the
    log, and a second request would queue behind the first.
    """
    return Call(
        "GET",
        f"/experiments/{_segment(experiment_id)}/evaluate",
        Evaluation.model_validate,
        Retry.UNAPPLIED,
        params={
            "strategy": strategy,
            "params": json.dumps(dict(params or {})),
            "missing_reward": missing_reward,
        },
        timeout_s=EVALUATE_TIMEOUT_S,
    )


def reward_item(
    experiment_id: str,
    arm_id: str,
    value: float,
    decision_id: str | None,
    event_id: str | None,
    user_context: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> RewardItem:
    """A reward as :class:`RewardItem` validates it (``InvalidRequestError`` if the server
    would refuse it), with a fresh ``event_id`` unless one is given; ``metrics``: the
    values of the experiment's declared metrics (docs/guardrails.md)."""
    fields = {
        "experiment_id": experiment_id,
        "arm_id": arm_id,
        "reward": value,
        "decision_id": decision_id,
        "event_id": event_id or new_event_id(),
        "user_context": None if user_context is None else dict(user_context),
    }
    if metrics is not None:
        fields["metrics"] = dict(metrics)
    return _valid(RewardItem, "POST /reward", fields)


def reward_for(
    decision: Decision, value: float, user_context: Mapping[str, Any] | None = None
) -> RewardItem:
    """The reward of ``decision`` (:meth:`RewardItem.for_decision`), refused like
    :func:`reward_item`'s."""
    try:
        return RewardItem.for_decision(decision, value, user_context)
    except ValidationError as exc:
        raise _invalid("POST /reward", exc) from None


def _valid(model: type[M], what: str, fields: Mapping[str, Any]) -> M:
    """``model`` built from ``fields``, or :class:`InvalidRequestError` naming each bad one."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(what, exc) from None


def _body(model: type[BaseModel], what: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of ``fields`` once ``model`` accepted them (ids trimmed as the server
    trims them); fields the caller left out stay out, as the original API's clients send."""
    return _valid(model, what, fields).model_dump(mode="json", exclude_unset=True)


def _invalid(what: str, exc: ValidationError) -> InvalidRequestError:
    errors = [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False)
    ]
    return InvalidRequestError(what, errors)


def _id(experiment_id: str) -> str:
    """The id trimmed as the server trims it, or :class:`InvalidRequestError`."""
    try:
        return normalize_id(experiment_id, "experiment_id")
    except InvalidIdError as exc:
        raise InvalidRequestError(
            "experiment id",
            [{"loc": ["experiment_id"], "msg": str(exc), "type": INVALID_ID}],
        ) from None


def _segment(experiment_id: str) -> str:
    """The id as one percent-encoded path segment: any id the server accepts (``a/b``,
    ``10% off``, ``..``) reaches its experiment, and no id can reach another route."""
    return url_segment(_id(experiment_id))

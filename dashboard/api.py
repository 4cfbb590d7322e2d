"""A small typed client for the decider's read API (the dashboard never touches Redis).

Every failure becomes an :class:`ApiError` subclass with a message fit for an operator,
so the UI can show ``st.error(str(exc))`` instead of a traceback. Timeouts are short: a
dashboard that hangs for 30 s on a dead API is worse than one that says it is down.
Responses are validated against TypedDicts with pydantic, so a shape drift in the API
shows up as one clear message here rather than a ``KeyError`` deep in a chart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from mab_client.paths import url_segment

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_URL_ENV = "MAB_API_URL"
#: Bearer token sent with every call when set: a read key (``MAB_READ_KEYS``; ``mab up``
#: generates one for the dashboard). The dashboard only reads, so it needs no more: reads
#: need a key when the decider has ``MAB_CLIENT_KEYS``, evaluation whenever it has an
#: admin key.
API_KEY_ENV = "MAB_API_KEY"

Bucket = Literal["hour", "minute"]


class ExperimentJson(TypedDict):
    """``ExperimentPublic`` of the decider."""

    experiment_id: str
    arm_ids: list[str]
    strategy: str
    strategy_params: dict[str, Any]
    version: NotRequired[int]


class ArmStatsJson(TypedDict):
    """``ArmStatsPublic``: ``pulls`` counts rewards observed, ``decisions`` serves."""

    arm_id: str
    pulls: int
    reward_sum: float
    mean: float
    decisions: int
    propensity: float


class StatsJson(TypedDict):
    """``StatsPublic`` of ``GET /experiments/{id}/stats``."""

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    config_version: int
    snapshot_version: int
    arms: list[ArmStatsJson]
    propensities: NotRequired[dict[str, float]]


class PointJson(TypedDict):
    """One (bucket, arm) of the time series; rates are null when undefined."""

    bucket_start: int
    arm_id: str
    decisions: int
    rewards: int
    reward_sum: float
    conversion_rate: float | None
    traffic_share: float | None


class ChangePointJson(TypedDict):
    ts: float
    arm_id: str
    detector: NotRequired[str]


class WinnerChangeJson(TypedDict):
    bucket_start: int
    from_arm: str | None
    to_arm: str


class TimeseriesJson(TypedDict):
    """``GET /experiments/{id}/timeseries`` (see docs/timeseries-api.md).

    ``from``/``to`` are not read (``from`` is a keyword); markers default to empty so an
    API that does not compute them yet still renders.
    """

    experiment_id: str
    bucket: str
    arm_ids: list[str]
    points: list[PointJson]
    change_points: NotRequired[list[ChangePointJson]]
    winner_changes: NotRequired[list[WinnerChangeJson]]


class EstimateJson(TypedDict):
    """One off-policy estimator; nulls where undefined."""

    estimator: str
    value: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None


class ArmSupportJson(TypedDict):
    arm_id: str
    logged_decisions: int
    logged_share: float
    target_share: float
    mean_reward: float | None


class EvaluationJson(TypedDict):
    """``GET /experiments/{id}/evaluate`` (``EvaluationPublic`` of the decider)."""

    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    missing_reward: str
    confidence: float
    estimates: list[EstimateJson]
    logged: EstimateJson
    ess: float
    weight_max: float | None
    arms: list[ArmSupportJson]
    warnings: list[str]
    decisions_logged: int
    decisions_evaluated: int
    decisions_without_reward: int
    truncated: bool
    max_decisions: int
    elapsed_s: float


class ApiError(Exception):
    """Any failure talking to the API; ``str()`` is a message for the operator."""


class ApiUnavailableError(ApiError):
    """Connection refused, DNS failure, timeout or a 5xx: the API is down or sick."""


class NotFoundError(ApiError):
    """404: unknown experiment, or an endpoint this API version does not serve."""


class RejectedError(ApiError):
    """422 (or another 4xx): the API does not accept these parameters."""


class UnauthorizedError(ApiError):
    """401/403: no key, or a key the API does not accept for this call."""


T = TypeVar("T")

_EXPERIMENTS = TypeAdapter(list[ExperimentJson])
_EXPERIMENT = TypeAdapter(ExperimentJson)
_STATS = TypeAdapter(StatsJson)
_TIMESERIES = TypeAdapter(TimeseriesJson)
_EVALUATION = TypeAdapter(EvaluationJson)

#: Off-policy evaluation reads the event log: give it far longer than a stats read.
EVALUATE_TIMEOUT_S = 120.0


def api_url_from_env() -> str:
    """The API base URL: ``MAB_API_URL`` or the local default, without a trailing slash."""
    return (os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")


def api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV, "").strip() or None


def _detail(resp: httpx.Response) -> str:
    """The API's ``detail`` (string or pydantic error list) as one line."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for err in detail:
            if isinstance(err, dict):
                loc = ".".join(str(p) for p in err.get("loc", []) if p != "query")
                parts.append(f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", "")))
        if parts:
            return "; ".join(parts)
    return resp.reason_phrase or f"HTTP {resp.status_code}"


@dataclass(frozen=True)
class ApiClient:
    """Blocking client: Streamlit scripts are synchronous, one request at a time is fine."""

    base_url: str = field(default_factory=api_url_from_env)
    timeout_s: float = 3.0
    connect_timeout_s: float = 1.0
    api_key: str | None = field(default_factory=api_key_from_env, repr=False)

    def _get(
        self,
        path: str,
        adapter: TypeAdapter[T],
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> T:
        url = f"{self.base_url}{path}"
        read_timeout = self.timeout_s if timeout_s is None else timeout_s
        timeout = httpx.Timeout(read_timeout, connect=self.connect_timeout_s)
        try:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            resp = httpx.get(url, params=params, timeout=timeout, headers=headers)
        except httpx.TimeoutException:
            raise ApiUnavailableError(
                f"The API at {self.base_url} did not answer within {read_timeout:g} s."
            ) from None
        except httpx.HTTPError as exc:
            raise ApiUnavailableError(
                f"Cannot reach the API at {self.base_url} ({type(exc).__name__}: {exc}). "
                f"Is the decider running? Start the stack with `make up`, or set "
                f"{API_URL_ENV}."
            ) from None
        if resp.status_code in (401, 403):
            raise UnauthorizedError(
                f"The API at {self.base_url} refused the call ({resp.status_code}: "
                f"{_detail(resp)}). Set {API_KEY_ENV} to one of the decider's read keys "
                "(MAB_READ_KEYS)."
            )
        if resp.status_code == 404:
            raise NotFoundError(_detail(resp))
        if resp.status_code >= 500:
            raise ApiUnavailableError(
                f"The API at {self.base_url} answered {resp.status_code} on {path}: {_detail(resp)}"
            )
        if resp.status_code >= 400:
            raise RejectedError(_detail(resp))
        try:
            return adapter.validate_json(resp.content)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise ApiError(
                f"Unexpected response from {path}: {loc}: {first['msg']} "
                f"(is {self.base_url} the decider?)"
            ) from None

    def list_experiments(self, limit: int = 1000) -> list[ExperimentJson]:
        """All experiments in creation order (one page of up to ``limit``)."""
        return self._get("/experiments", _EXPERIMENTS, {"limit": limit})

    def get_experiment(self, experiment_id: str) -> ExperimentJson:
        return self._get(f"/experiments/{url_segment(experiment_id)}", _EXPERIMENT)

    def stats(self, experiment_id: str) -> StatsJson:
        """Current folded statistics per arm, in config order."""
        return self._get(f"/experiments/{url_segment(experiment_id)}/stats", _STATS)

    def timeseries(
        self,
        experiment_id: str,
        bucket: Bucket = "hour",
        from_ts: int | None = None,
        to_ts: int | None = None,
    ) -> TimeseriesJson:
        """Per-bucket, per-arm series; :class:`RejectedError` if the bucket is unsupported."""
        params: dict[str, Any] = {"bucket": bucket}
        if from_ts is not None:
            params["from"] = from_ts
        if to_ts is not None:
            params["to"] = to_ts
        return self._get(
            f"/experiments/{url_segment(experiment_id)}/timeseries", _TIMESERIES, params
        )

    def evaluate(
        self,
        experiment_id: str,
        strategy: str,
        params: dict[str, Any],
        missing_reward: str = "drop",
    ) -> EvaluationJson:
        """Off-policy estimates of ``strategy`` on the experiment's logged decisions."""
        query = {
            "strategy": strategy,
            "params": json.dumps(params),
            "missing_reward": missing_reward,
        }
        return self._get(
            f"/experiments/{url_segment(experiment_id)}/evaluate",
            _EVALUATION,
            query,
            timeout_s=max(self.timeout_s, EVALUATE_TIMEOUT_S),
        )

"""Python SDK of the MAB decider: decisions, rewards (single and bulk), experiments, stats.

``MabClient`` for synchronous code, ``AsyncMabClient`` for asyncio; both on httpx, with
bounded timeouts, typed results and errors, and retries only where a retry is safe.
``mab_client.assignment`` is the language-neutral assignment rule (``Allocation.choose``).

The names below are imported on first use (PEP 562): the server's core imports the
SDK's pure modules (:mod:`mab_client.ids`, :mod:`mab_client.models`), and importing
them must not load the HTTP stack (httpx, tenacity) into every stream processor.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names and editors see them
    from mab_client.assignment import Allocation, LocalDecision
    from mab_client.async_client import AsyncMabClient
    from mab_client.calls import Retry, RetryPolicy
    from mab_client.client import MabClient
    from mab_client.errors import (
        ApiError,
        AuthError,
        ConflictError,
        InvalidAllocationError,
        InvalidRequestError,
        InvalidUnitIdError,
        MabError,
        MabTransportError,
        NotFoundError,
        RequestValidationError,
        UnavailableError,
        UnexpectedResponseError,
    )
    from mab_client.models import (
        ArmStats,
        Decision,
        Evaluation,
        Experiment,
        Ready,
        RewardItem,
        RewardReceipt,
        Stats,
        StrategyConfig,
        Timeseries,
        TimeseriesPoint,
    )

#: Where each public name lives.
_HOMES = {
    "Allocation": "mab_client.assignment",
    "LocalDecision": "mab_client.assignment",
    "Retry": "mab_client.calls",
    "RetryPolicy": "mab_client.calls",
    "AsyncMabClient": "mab_client.async_client",
    "MabClient": "mab_client.client",
    "ApiError": "mab_client.errors",
    "AuthError": "mab_client.errors",
    "ConflictError": "mab_client.errors",
    "InvalidAllocationError": "mab_client.errors",
    "InvalidRequestError": "mab_client.errors",
    "InvalidUnitIdError": "mab_client.errors",
    "MabError": "mab_client.errors",
    "MabTransportError": "mab_client.errors",
    "NotFoundError": "mab_client.errors",
    "RequestValidationError": "mab_client.errors",
    "UnavailableError": "mab_client.errors",
    "UnexpectedResponseError": "mab_client.errors",
    "ArmStats": "mab_client.models",
    "Decision": "mab_client.models",
    "Evaluation": "mab_client.models",
    "Experiment": "mab_client.models",
    "Ready": "mab_client.models",
    "RewardItem": "mab_client.models",
    "RewardReceipt": "mab_client.models",
    "Stats": "mab_client.models",
    "StrategyConfig": "mab_client.models",
    "Timeseries": "mab_client.models",
    "TimeseriesPoint": "mab_client.models",
}

__all__ = [
    "Allocation",
    "ApiError",
    "ArmStats",
    "AsyncMabClient",
    "AuthError",
    "ConflictError",
    "Decision",
    "Evaluation",
    "Experiment",
    "InvalidAllocationError",
    "InvalidRequestError",
    "InvalidUnitIdError",
    "LocalDecision",
    "MabClient",
    "MabError",
    "MabTransportError",
    "NotFoundError",
    "Ready",
    "RequestValidationError",
    "Retry",
    "RetryPolicy",
    "RewardItem",
    "RewardReceipt",
    "Stats",
    "StrategyConfig",
    "Timeseries",
    "TimeseriesPoint",
    "UnavailableError",
    "UnexpectedResponseError",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mab_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # imported once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})

"""Python SDK of the MAB decider: decisions, rewards (single and bulk), experiments, stats.

``MabClient`` for synchronous code, ``AsyncMabClient`` for asyncio; both on httpx, with
bounded timeouts, typed results and errors, and retries only where a retry is safe.
``mab_client.assignment`` is the language-neutral assignment rule (``Allocation.choose``).
"""

from mab_client.assignment import Allocation, LocalDecision
from mab_client.calls import Retry, RetryPolicy
from mab_client.client import AsyncMabClient, MabClient
from mab_client.errors import (
    ApiError,
    AuthError,
    ConflictError,
    InvalidAllocationError,
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

"""Typed results and request items of the decider's HTTP API, as a client sees them.

Defined here rather than imported from ``services.decider``: a storefront installs the
SDK without FastAPI, and unknown fields the server adds later are ignored (``extra``),
so an older client keeps working against a newer server.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def new_event_id() -> str:
    """An idempotency key: a retried reward carrying it is counted once by the server."""
    return uuid.uuid4().hex


class Experiment(_Result):
    experiment_id: str
    arm_ids: list[str]
    strategy: str
    strategy_params: dict[str, Any]
    version: int


class StrategyConfig(_Result):
    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    version: int


class Decision(_Result):
    """One served arm. Keep ``decision_id`` and send it back with the reward."""

    experiment_id: str
    arm_id: str
    strategy: str
    decision_id: str
    propensity: float
    arms: list[str] = Field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Decision:
        """The wire shape nests the arm list under ``metadata`` (the original API's v1 contract)."""
        meta = body.get("metadata") or {}
        return cls.model_validate({**body, "arms": list(meta.get("arms", []))})


class RewardReceipt(_Result):
    status: Literal["ok"]
    experiment_id: str
    arm_id: str
    strategy: str
    event_id: str


class RewardItem(_Result):
    """One reward of a bulk call (the body of ``POST /reward``).

    ``event_id`` is generated when omitted, so resending the same item after a timeout
    or a 503 is deduplicated by the reward consumer instead of counted twice.
    """

    experiment_id: str
    arm_id: str
    reward: float
    decision_id: str | None = None
    event_id: str = Field(default_factory=new_event_id)
    #: Optional JSON object about the visitor, as in the original API (the server bounds
    #: it: 32 keys, 2 KiB as JSON).
    user_context: dict[str, Any] | None = None

    @classmethod
    def for_decision(
        cls, decision: Decision, reward: float, user_context: Mapping[str, Any] | None = None
    ) -> RewardItem:
        """The reward of ``decision``: its experiment, arm and decision id carried through."""
        return cls(
            experiment_id=decision.experiment_id,
            arm_id=decision.arm_id,
            reward=reward,
            decision_id=decision.decision_id,
            user_context=None if user_context is None else dict(user_context),
        )

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ArmStats(_Result):
    arm_id: str
    pulls: int
    reward_sum: float
    mean: float
    decisions: int
    propensity: float


class Stats(_Result):
    experiment_id: str
    strategy: str
    strategy_params: dict[str, Any]
    config_version: int
    snapshot_version: int
    arms: list[ArmStats]
    propensities: dict[str, float]

    def arm(self, arm_id: str) -> ArmStats:
        """The statistics of one arm (``KeyError`` naming the known arms)."""
        for a in self.arms:
            if a.arm_id == arm_id:
                return a
        raise KeyError(f"arm {arm_id!r} not in {[a.arm_id for a in self.arms]}")

    @property
    def total_pulls(self) -> int:
        return sum(a.pulls for a in self.arms)


class TimeseriesPoint(_Result):
    bucket_start: int
    arm_id: str
    decisions: int
    rewards: int
    reward_sum: float
    conversion_rate: float | None
    traffic_share: float | None


class ChangePoint(_Result):
    ts: float
    arm_id: str
    detector: str


class WinnerChange(_Result):
    bucket_start: int
    from_arm: str
    to_arm: str


class Timeseries(_Result):
    experiment_id: str
    bucket: Literal["hour", "minute"]
    from_: int = Field(alias="from")
    to: int
    arm_ids: list[str]
    points: list[TimeseriesPoint]
    change_points: list[ChangePoint]
    winner_changes: list[WinnerChange]


class Ready(_Result):
    status: Literal["ready", "not_ready"]
    redis: str
    kafka: str

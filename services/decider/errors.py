"""HTTP errors shared by the FastAPI routes and the raw fast path (one wording each)."""

from __future__ import annotations

from fastapi import HTTPException, status

from bandit_core.decision_ids import arm_index_of
from schemas.events import ExperimentConfig, RewardObserved


def not_found(experiment_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id!r} not found")


def reward_rejected(
    reason: str, event: RewardObserved, config: ExperimentConfig | None
) -> HTTPException:
    """The client-facing error for a ``reward_rejection`` reason (404 or 422)."""
    if reason == "unknown_experiment" or config is None:
        return not_found(event.experiment_id)
    if reason == "unknown_arm":
        msg = (
            f"arm {event.arm_id!r} is not in experiment {event.experiment_id!r}; "
            f"arms: {list(config.arm_ids)}"
        )
    elif reason == "arm_mismatch":
        index = arm_index_of(event.decision_id or "")
        served = config.arm_ids[index] if index is not None and index < len(config.arm_ids) else "?"
        msg = (
            f"decision {event.decision_id!r} served arm {served!r}, "
            f"but the reward names {event.arm_id!r}"
        )
    elif reason == "bad_decision_id":
        msg = f"decision_id {event.decision_id!r} was not issued by this service"
    else:
        msg = f"reward rejected: {reason}"
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, msg)

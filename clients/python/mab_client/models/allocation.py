"""The answer of ``GET /experiments/{id}/allocation``: the weights new units get now, one
stored version, the same on every decider worker (docs/assignment-spec.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mab_client.models.result import Result, examples


class AllocationArmPublic(Result):
    arm_id: str
    weight: float = Field(
        ge=0.0, le=1.0, description="Share of new units this arm gets in this version."
    )


class AllocationHashPublic(Result):
    algorithm: str = Field(description="The assignment rule (docs/assignment-spec.md).")
    unit_id_storage: Literal["hashed", "raw"] = Field(
        description="What the decision events carry for a unit: a salted digest or the id."
    )


class AllocationPublic(Result):
    """The weights the bandit wants for new units now: one stored version, the same on
    every decider worker, from which an SDK may decide locally (same rule, same salt)."""

    model_config = examples(
        {
            "experiment_id": "cta-button-test",
            "version": 29603160,
            "arms": [
                {"arm_id": "blue-button", "weight": 0.2},
                {"arm_id": "green-button", "weight": 0.8},
            ],
            "assignment": "sticky",
            "salt": "9f2c4e1a7b3d5f60",
            "hash": {"algorithm": "mab-race-sha256-v1", "unit_id_storage": "hashed"},
            "valid_until": 1776189660,
            "min_arm_share": 0.05,
        }
    )

    experiment_id: str
    version: int = Field(description="Allocation epoch: floor(unix time / interval).")
    arms: list[AllocationArmPublic] = Field(description="In the experiment's arm order.")
    assignment: Literal["sticky", "consistent", "per_request"]
    salt: str = Field(description="Input of the unit hashes (public, not a secret).")
    hash: AllocationHashPublic
    valid_until: int = Field(description="Unix seconds when the next version starts.")
    min_arm_share: float = Field(description="Traffic floor included in the weights.")

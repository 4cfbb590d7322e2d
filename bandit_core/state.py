"""Strategy-independent sufficient statistics of one experiment.

A strategy is a pure function of this state (plus an RNG), so changing strategy never
loses history and the simulator, the decider and replay share the exact same numbers.
The state is a plain mutable dataclass for speed, but it is only ever mutated inside
:func:`bandit_core.fold.fold_batch` on a private copy: callers see a pure fold.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.events import ExperimentConfig


@dataclass(slots=True)
class ArmStats:
    """Per-arm counters. ``pulls`` counts observed rewards; ``decisions`` counts serves."""

    pulls: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    decisions: int = 0
    last_reward_ts: float = 0.0

    @property
    def mean(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0

    def to_list(self) -> list[float | int]:
        return [
            self.pulls,
            self.reward_sum,
            self.reward_sq_sum,
            self.decisions,
            self.last_reward_ts,
        ]

    @classmethod
    def from_list(cls, values: list[Any]) -> ArmStats:
        pulls, s, sq, decisions, last = values
        return cls(int(pulls), float(s), float(sq), int(decisions), float(last))


@dataclass(slots=True)
class ExperimentState:
    """The folded state of one experiment.

    ``config`` is the highest-version configuration seen. ``seen`` maps dedupe keys
    (``d:<decision_id>`` and ``e:<event_id>``) to their event time; live consumers hold a
    per-batch *view* of it loaded from Redis, replay holds all of it. ``version`` counts
    applied events and lets the decider tell how fresh its cached snapshot is.
    """

    experiment_id: str
    config: ExperimentConfig | None = None
    arms: dict[str, ArmStats] = field(default_factory=dict)
    version: int = 0
    duplicates: int = 0
    seen: dict[str, float] = field(default_factory=dict)

    def arm(self, arm_id: str) -> ArmStats:
        stats = self.arms.get(arm_id)
        if stats is None:
            stats = self.arms[arm_id] = ArmStats()
        return stats

    def stats_for(self, arm_ids: tuple[str, ...] | list[str]) -> list[ArmStats]:
        """Stats aligned with ``arm_ids`` (zeros for arms never seen)."""
        empty = ArmStats()
        return [self.arms.get(a, empty) for a in arm_ids]

    def copy(self) -> ExperimentState:
        return ExperimentState(
            experiment_id=self.experiment_id,
            config=self.config,
            arms={k: copy.copy(v) for k, v in self.arms.items()},
            version=self.version,
            duplicates=self.duplicates,
            seen=dict(self.seen),
        )

    # --- snapshot blob (what Redis stores; config and seen live in their own keys) ---
    def snapshot_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "experiment_id": self.experiment_id,
                "version": self.version,
                "duplicates": self.duplicates,
                "arms": {k: v.to_list() for k, v in self.arms.items()},
            }
        )

    @classmethod
    def from_snapshot(cls, raw: bytes | str | None, experiment_id: str) -> ExperimentState:
        if raw is None:
            return cls(experiment_id=experiment_id)
        obj = orjson.loads(raw)
        return cls(
            experiment_id=obj["experiment_id"],
            arms={k: ArmStats.from_list(v) for k, v in obj["arms"].items()},
            version=int(obj["version"]),
            duplicates=int(obj.get("duplicates", 0)),
        )

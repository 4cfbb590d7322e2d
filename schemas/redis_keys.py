"""The Redis key layout, shared by the decider (writer of configs), the reward consumer
(writer of snapshots) and replay.

All keys of one experiment share the hash tag ``{<experiment id>}`` so a Redis Cluster
keeps them in one slot and one Lua script may touch them all. Ids are restricted to a
charset without ``{``, ``}``, ``:`` or glob characters (see :mod:`schemas.ids`), so no two
experiments can ever produce the same key. ``prefix`` isolates tests and tenants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExperimentKeys:
    """The keys of one experiment."""

    config: str  # JSON ExperimentConfig, written only by the decider's command scripts
    snapshot: str  # JSON snapshot blob (ExperimentState.snapshot_bytes), consumer-owned
    offsets: str  # hash "<topic>:<partition>" -> last applied offset, same atomic step
    seen: str  # zset dedupe key -> event ts (reward dedupe, see bandit_core.fold)


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = ""

    @classmethod
    def from_env(cls) -> RedisKeys:
        return cls(os.environ.get("MAB_REDIS_PREFIX", ""))

    def experiment(self, experiment_id: str) -> ExperimentKeys:
        base = f"{self.prefix}mab:{{{experiment_id}}}:"
        return ExperimentKeys(
            config=base + "config",
            snapshot=base + "snap",
            offsets=base + "offsets",
            seen=base + "seen",
        )

    @property
    def index(self) -> str:
        """Zset experiment id -> creation time (the list endpoint; single key, own slot)."""
        return f"{self.prefix}mab:experiments"

    def snapshot_channel(self) -> str:
        """Pub/sub channel where the consumer announces updated experiments."""
        return f"{self.prefix}mab:snapshots"

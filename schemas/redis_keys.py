"""The Redis key layout, shared by the decider (writer of configs), the reward consumer
(writer of snapshots) and replay.

All keys of one experiment share the hash tag ``{<encoded experiment id>}`` so a Redis
Cluster keeps them in one slot and one Lua script may touch them all. Ids may contain
any printable character (``:``, ``*``, ``{``, ``|``, ``%``, spaces …), so every id is
encoded before it becomes part of a key or a hash field (:func:`schemas.ids.key_segment`):
the encoding is injective and its output never holds ``{``, ``}``, ``:``, ``|`` or a glob
character, so no two experiments can produce the same key, no id can end its hash tag
early, and a ``SCAN`` pattern built from an encoded id matches that experiment only.
Ids of the earlier ``[A-Za-z0-9._-]`` charset encode to themselves: their keys are
unchanged. ``prefix`` isolates tests and tenants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Literal

from schemas.ids import id_from_key_segment, key_segment

#: Time-series bucket widths (seconds) of the projector, by the API's ``bucket`` name.
#: Buckets are aligned to the epoch (UTC): ``start = floor(ts / width) * width``.
BucketKind = Literal["hour", "minute"]
BUCKET_SECONDS: Final[dict[BucketKind, int]] = {"hour": 3600, "minute": 60}

#: Fields of a bucket hash are ``<encoded arm id>|<kind>``; the encoding never holds ``|``.
FIELD_DECISIONS: Final = "d"  # decisions served
FIELD_REWARDS: Final = "r"  # rewards applied (same rule and dedupe as the reward consumer)
FIELD_REWARD_SUM: Final = "s"  # sum of rewards in integer micro-units, round(reward * 1e6)
REWARD_SUM_SCALE: Final = 1_000_000


def bucket_field(arm_id: str, kind: str) -> str:
    """Field of a bucket hash, e.g. ``blue-button|d`` or ``Free%20Shipping|r``."""
    return f"{key_segment(arm_id)}|{kind}"


def _decoded(encoded: str, sep: str, rest: str) -> tuple[str, str] | None:
    """``(id, rest)`` when ``encoded`` is an encoded id and ``sep`` was found, else ``None``
    (a key or field this layout never writes)."""
    if not sep:
        return None
    try:
        return id_from_key_segment(encoded), rest
    except ValueError:
        return None


def parse_bucket_field(field: str) -> tuple[str, str] | None:
    """``(arm id, kind)`` of a bucket hash field; ``None`` for a field we never write."""
    return _decoded(*field.partition("|"))


@dataclass(frozen=True, slots=True)
class ExperimentKeys:
    """The keys of one experiment."""

    config: str  # JSON ExperimentConfig, written only by the decider's command scripts
    snapshot: str  # JSON snapshot blob (ExperimentState.snapshot_bytes), consumer-owned
    offsets: str  # hash "<topic>:<partition>" -> last applied offset, same atomic step
    seen: str  # zset dedupe key -> event ts (reward dedupe, see bandit_core.fold)
    pending: str  # zset decision id -> deadline: open attribution windows (consumer-owned)
    # --- projector-owned (time series); written in one Lua step with its offsets ---
    projector_offsets: str  # hash "<topic>:<partition>" -> last offset the projector applied
    projector_seen: str  # zset dedupe key -> event ts: the projector's own reward dedupe
    change_points: str  # zset JSON [event_id, arm_id, detector] -> event ts
    bucket_base: str  # prefix of the bucket hashes, see :meth:`bucket`

    def bucket(self, kind: BucketKind, start: int) -> str:
        """Hash of one time bucket: fields ``<arm>|d``, ``<arm>|r``, ``<arm>|s`` (ints)."""
        return f"{self.bucket_base}{kind[0]}:{start}"

    def bucket_pattern(self, kind: BucketKind) -> str:
        """``SCAN`` pattern matching every bucket of one family (hour or minute)."""
        return f"{self.bucket_base}{kind[0]}:*"

    def hour_bucket(self, hour_start: int) -> str:
        return self.bucket("hour", hour_start)

    def minute_bucket(self, minute_start: int) -> str:
        return self.bucket("minute", minute_start)


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = ""

    def __post_init__(self) -> None:
        # A brace in the prefix would become every key's hash tag: all experiments in
        # one Cluster slot (correct, but one node would hold everything).
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"Redis key prefix {self.prefix!r} must not contain braces")

    @classmethod
    def from_env(cls) -> RedisKeys:
        return cls(os.environ.get("MAB_REDIS_PREFIX", ""))

    def experiment(self, experiment_id: str) -> ExperimentKeys:
        base = f"{self.prefix}mab:{{{key_segment(experiment_id)}}}:"
        return ExperimentKeys(
            config=base + "config",
            snapshot=base + "snap",
            offsets=base + "offsets",
            seen=base + "seen",
            pending=base + "pending",
            projector_offsets=base + "proj:offsets",
            projector_seen=base + "proj:seen",
            change_points=base + "proj:cp",
            bucket_base=base + "ts:",
        )

    def split(self, key: str) -> tuple[str, str] | None:
        """``(experiment id, kind)`` of one of :meth:`experiment`'s keys under this
        prefix (``kind``: what follows ``mab:{…}:``), else ``None``."""
        head = self.prefix + "mab:{"
        if not key.startswith(head):
            return None
        return _decoded(*key[len(head) :].partition("}:"))

    def allocation(self, experiment_id: str, version: int) -> str:
        """String: one stored allocation version of an experiment
        (:class:`bandit_core.allocation.AllocationRecord` JSON), written once by the
        first decider worker that needs it (``SET NX``), expiring after the decider's
        ``MAB_ALLOCATION_RETENTION_S``.

        It carries the experiment's hash tag (same Cluster slot as its other keys) but
        lies outside its ``mab:{…}:`` namespace on purpose: that namespace is what
        ``mab replay`` rebuilds, compares and swaps, and an allocation is not derived
        from the log (it records what the bandit wanted during one epoch).
        """
        return f"{self.prefix}mab:alloc:{{{key_segment(experiment_id)}}}:{version}"

    def unit(self, experiment_id: str, token: str) -> str:
        """String: a sticky unit's assignment, ``"<decision id>|<propensity>|<allocation
        version>|<assigned ts>"``, written once (``SET NX``) by the decider worker that
        assigned it and by ``mab replay --rebuild``, expiring after the experiment's
        ``sticky_ttl_s`` from the assignment. ``token`` is the unit's token (a hex digest,
        or the raw unit id: encoded like an id).

        The experiment's hash tag, outside its ``mab:{…}:`` namespace: that namespace is
        swapped whole by a rebuild, and a million units must not ride in one ``MULTI``;
        the table is rebuilt by ``SET NX`` instead (a live assignment is never replaced).
        """
        return f"{self.prefix}mab:unit:{{{key_segment(experiment_id)}}}:{key_segment(token)}"

    def unit_pattern(self, experiment_id: str) -> str:
        """``SCAN`` pattern of every sticky unit of one experiment (:meth:`unit`)."""
        return f"{self.prefix}mab:unit:{{{key_segment(experiment_id)}}}:*"

    def exposure(self, experiment_id: str, exposure_id: str) -> str:
        """String ``"1"``: the mark of a reported exposure (``POST /exposures``, the
        exposures topic), set with ``SET NX EX`` the allocation retention, so the same
        ``exposure_id`` reported again is a duplicate and not a second decision event.
        Outside the replayed namespace like :meth:`allocation`, with the experiment's
        hash tag; exposure ids are ``[A-Za-z0-9._-]``, no encoding needed."""
        return f"{self.prefix}mab:expo:{{{key_segment(experiment_id)}}}:{exposure_id}"

    def exposure_offsets(self, experiment_id: str) -> str:
        """Hash ``"<topic>:<partition>"`` -> last offset of the exposures topic judged for
        this experiment, written with the exposure marks in one step (the reward
        consumer's exposure judge, :mod:`services.reward_consumer.exposures`). Outside the
        replayed namespace like the marks it guards (replay never reads exposures)."""
        return f"{self.prefix}mab:expo-judge:{{{key_segment(experiment_id)}}}:offsets"

    def exposure_seen(self, experiment_id: str) -> str:
        """Zset: the exposure judge's engine dedupe set (the engine keeps one per
        processor; the judge dedupes by :meth:`exposure` marks, so it stays empty)."""
        return f"{self.prefix}mab:expo-judge:{{{key_segment(experiment_id)}}}:seen"

    @property
    def index(self) -> str:
        """Zset experiment id -> creation time (the list endpoint; single key, own slot)."""
        return f"{self.prefix}mab:experiments"

    def snapshot_channel(self) -> str:
        """Pub/sub channel where the consumer announces updated experiments."""
        return f"{self.prefix}mab:snapshots"

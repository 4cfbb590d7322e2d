"""Why ``mab replay --rebuild`` refuses to run next to the processors, and how it tells.

The processors (reward consumer, projector) write the very keys a rebuild replaces, and
commit to Kafka what they wrote. Running next to a rebuild, they lose records for good:

* ``--rebuild`` folds the log up to the end offsets it read at its start, then swaps
  that state in. Whatever a processor applied after those offsets before the swap is
  discarded by the swap, yet its Kafka offsets are committed, so it is never redelivered:
  the counts and the dedupe keys of those records are missing (a redelivery of such a
  reward would count twice). After a Redis loss it is worse still: a processor that
  finds no config dead-letters the records as ``unknown_experiment`` and commits them.
* ``--rebuild --from-timestamp`` applies the tail on top of the live state through the
  processors' own handlers, which skip every record at or below the offsets stored with
  an experiment. A live processor that writes an experiment first (from its committed
  position, past the gap the tail is meant to fill) stores offsets past the gap, and
  the tail then skips the gap for good.

With the processors stopped both are safe: the rebuilt offsets are at or beyond the
groups' committed positions, so on restart the stored-offset check drops whatever they
read again. Pausing them from here instead is not possible in general: a Kafka consumer
pauses only from inside its own process, and stopping one is the job of whatever runs it
(``mab up``, compose, Kubernetes); so the rebuild refuses and names the command.

Who counts as running: every live member of the groups the processors' settings name
(``MAB_CONSUMER_GROUP_ID``, ``MAB_PROJECTOR_GROUP_ID``, read from the same environment),
and of any other group assigned partitions of this deployment's rewards or decisions
topics (a processor started with another group id than the shell that runs the replay,
or another application reading them; ``--force`` is for the latter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from schemas.topics import TopicNames
from services.projector import ProjectorSettings
from services.reward_consumer import ConsumerSettings
from stream_runtime.kafka_connection import KafkaTarget
from stream_runtime.kafka_metadata import GroupMember, group_members

#: Exit code of a rebuild refused because processors run (1: differences, 2: bad input).
EXIT_PROCESSORS_RUNNING: Final = 3

#: How to stop the processors (and start them again) where the project deploys them.
STOP_COMMANDS: Final = (
    ("mab up (local stack)", "mab down && mab up --no-services", "mab up"),
    (
        "docker compose",
        "docker compose stop reward-consumer projector",
        "docker compose start reward-consumer projector",
    ),
    (
        "Kubernetes (deploy/k8s)",
        "kubectl -n mab scale deployment/reward-consumer deployment/projector --replicas=0",
        "kubectl apply -k deploy/k8s",
    ),
)


@dataclass(frozen=True, slots=True)
class ProcessorGroups:
    """The consumer groups of the processors that write the live keys."""

    reward_consumer: str
    projector: str

    @classmethod
    def from_env(cls) -> ProcessorGroups:
        """The group ids the services read from the same environment."""
        return cls(ConsumerSettings().group_id, ProjectorSettings().group_id)

    def describe(self, group_id: str) -> str:
        if group_id == self.reward_consumer:
            return "the reward consumer's group (MAB_CONSUMER_GROUP_ID)"
        if group_id == self.projector:
            return "the projector's group (MAB_PROJECTOR_GROUP_ID)"
        return "another group reading the topics"


class ProcessorsRunning(Exception):
    """A rebuild was refused: these processors (group members) run. Nothing was written."""

    def __init__(
        self, members: Sequence[GroupMember], groups: ProcessorGroups | None, mode: str
    ) -> None:
        self.members = tuple(members)
        self.groups = groups
        self.mode = mode
        super().__init__(refusal(self.members, groups, mode))


def _member_lines(members: Sequence[GroupMember], groups: ProcessorGroups | None) -> list[str]:
    lines: list[str] = []
    for group_id in sorted({m.group_id for m in members}):
        mine = [m for m in members if m.group_id == group_id]
        what = groups.describe(group_id) if groups is not None else "reads the topics"
        noun = "member" if len(mine) == 1 else "members"
        lines.append(f"  group {group_id!r}, {what}: {len(mine)} live {noun}")
        for m in mine:
            reads = f" reading {', '.join(m.topics)}" if m.topics else ""
            lines.append(f"    client id {m.client_id!r} on host {m.host}{reads}")
    return lines


def refusal(members: Sequence[GroupMember], groups: ProcessorGroups | None, mode: str) -> str:
    """The refusal: who runs, why that is a problem, how to stop them, what ``--force`` is."""
    lines = [
        f"{mode} refused, nothing was written: consumers of the rewards and decisions "
        "topics are running.",
        "What they write while a rebuild runs is lost or skipped for good (their Kafka "
        "offsets are committed past it).",
        *_member_lines(members, groups),
        "Stop them, run the rebuild again, then start them again:",
    ]
    width = max(len(where) for where, _, _ in STOP_COMMANDS)
    for where, stop, start in STOP_COMMANDS:
        lines.append(f"  {where.ljust(width)}  {stop}   (then: {start})")
    lines += [
        "A process that was killed rather than stopped stays a member until its session "
        "times out (MAB_SESSION_TIMEOUT_MS, MAB_PROJECTOR_SESSION_TIMEOUT_MS: 10 s by "
        "default).",
        "--force rebuilds anyway: only when these are not processors writing this Redis "
        "(docs/operations.md, Replaying, says what it risks).",
    ]
    return "\n".join(lines)


def ensure_processors_stopped(
    kafka: KafkaTarget,
    topics: TopicNames,
    groups: ProcessorGroups | None,
    *,
    mode: str,
    force: bool,
    progress: Callable[[str], None],
) -> None:
    """Raise :class:`ProcessorsRunning` when processors run; with ``force`` only warn.

    ``groups`` ``None``: only groups assigned partitions of the topics count. Blocking
    (two admin requests, ~20 ms), and called as is rather than through
    ``asyncio.to_thread``: it runs before replay's worker pool forks, and a thread of
    asyncio's default executor left behind would make the pool spawn instead
    (:func:`mab_cli.replay.pool_context`). The admin client's threads end when it
    returns. A broker that does not answer, or a named
    group that cannot be described, raises :class:`confluent_kafka.KafkaException`.
    """
    named = () if groups is None else (groups.reward_consumer, groups.projector)
    members = group_members(kafka, named, (topics.rewards, topics.decisions))
    if not members:
        return
    if not force:
        raise ProcessorsRunning(members, groups, mode)
    progress(f"--force: {mode} goes ahead although these consumers run:")
    for line in _member_lines(members, groups):
        progress(line)

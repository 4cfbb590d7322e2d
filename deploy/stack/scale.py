"""Scale state: how many instances of each service should run on this machine, and
where that wish is remembered.

``mab up --consumers N --projectors N --decider-workers N`` asks for counts; they are kept
in ``<run dir>/scale.json``, so a later ``mab up`` without options restarts what is
missing instead of scaling back to one. A service with ``scaling="processes"`` runs N
copies in one consumer group (``<name>``, ``<name>.2`` ... ``<name>.N``), one with
``scaling="workers"`` one server with N workers (status rows ``<name>.w1`` ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from deploy.stack.errors import StackError
from deploy.stack.process import recorded_names
from deploy.stack.services import ServiceSpec

#: Most instances of one service ``mab up`` starts (a typo like 100 should not fork-bomb).
MAX_INSTANCES: Final = 32
SCALE_FILE: Final = "scale.json"


def instance_name(service: str, index: int) -> str:
    """``reward-consumer`` for instance 1, ``reward-consumer.2`` for instance 2, ..."""
    return service if index == 1 else f"{service}.{index}"


def worker_name(instance: str, index: int) -> str:
    """The status row of worker ``index`` (from 1) of a server supervisor."""
    return f"{instance}.w{index}"


def parse_scale(name: str, raw: str | int) -> int:
    """A wanted instance count, or a :class:`StackError` naming where it came from."""
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_INSTANCES:
        raise StackError(f"{name}={raw!r}: want a whole number from 1 to {MAX_INSTANCES}")
    return int(text)


def load_scale(run_dir: Path) -> dict[str, int]:
    """The instance counts the last ``mab up`` was asked for (empty when none)."""
    try:
        raw = json.loads((run_dir / SCALE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): parse_scale(str(k), v) for k, v in raw.items()}


def save_scale(run_dir: Path, scale: Mapping[str, int]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SCALE_FILE).write_text(json.dumps(dict(sorted(scale.items()))) + "\n")


class ScalePlan:
    """The wanted instance count of each scalable service of one stack."""

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        run_dir: Path,
        requested: Mapping[str, int] | None = None,
    ) -> None:
        """``requested`` maps a scalable service's name to its wanted count; names not
        given keep the count of the last ``up`` (``scale.json``), else 1."""
        self.run_dir = run_dir
        scalable = {s.name for s in services if s.scaling != "single"}
        wanted = dict(requested or {})
        unknown = sorted(set(wanted) - scalable)
        if unknown:
            raise StackError(f"cannot scale {unknown}; scalable services: {sorted(scalable)}")
        for name, n in wanted.items():
            parse_scale(name, n)
        kept = {k: v for k, v in load_scale(run_dir).items() if k in scalable}
        self.counts: dict[str, int] = {**kept, **wanted}

    def count(self, spec: ServiceSpec) -> int:
        """How many instances of ``spec`` should run (workers of one server included)."""
        return 1 if spec.scaling == "single" else self.counts.get(spec.name, 1)

    def instances(self, spec: ServiceSpec) -> range:
        """Indices of the processes of ``spec`` that should run (1 = the plain name)."""
        return range(1, (self.count(spec) if spec.scaling == "processes" else 1) + 1)

    def running(self, spec: ServiceSpec) -> list[int]:
        """Indices of the instances of ``spec`` that have a pid file (1 = the plain name)."""
        prefix = f"{spec.name}."
        found: set[int] = set()
        for name in recorded_names(self.run_dir):
            suffix = name[len(prefix) :] if name.startswith(prefix) else ""
            if name == spec.name:
                found.add(1)
            elif suffix.isdigit() and int(suffix) > 1:
                found.add(int(suffix))
        return sorted(found)

    def expected(self, services: Sequence[ServiceSpec], with_services: bool = True) -> list[str]:
        """Component rows that must be healthy after ``up(with_services=...)``."""
        names = ["redis", "kafka"]
        if not with_services:
            return names
        for spec in services:
            if not spec.available():
                continue
            n = self.count(spec)
            if spec.scaling == "processes":
                names += [instance_name(spec.name, i) for i in self.instances(spec)]
            else:
                names.append(spec.name)
                if spec.scaling == "workers" and n > 1:
                    names += [worker_name(spec.name, i) for i in range(1, n + 1)]
        return names

    def idle_members(
        self, services: Sequence[ServiceSpec], partitions: Mapping[str, int], topic_prefix: str
    ) -> list[str]:
        """One warning per consumer group asked for more members than its topics have
        partitions (``partitions``: name → count, as the broker reports them).

        Kafka gives each partition to one member of a group, and the processors' range
        assignment keeps an experiment's partitions of every topic on the same member, so
        the members beyond the largest partition count get nothing to do.
        """
        from schemas.topics import TopicNames

        names = TopicNames.with_prefix(topic_prefix)
        warnings = []
        for spec in services:
            n = self.count(spec)
            if spec.scaling != "processes" or not spec.consumes:
                continue
            topics = {getattr(names, field): 0 for field in spec.consumes}
            topics.update({t: partitions[t] for t in topics if t in partitions})
            busy = max(topics.values())
            if n > busy:
                listed = ", ".join(f"{t} {c}" for t, c in topics.items())
                warnings.append(
                    f"{n} {spec.name} instances but their topics have {busy} partitions at "
                    f"most ({listed}): {n - busy} will sit idle, as Kafka gives each "
                    "partition to one member of a consumer group (add partitions first: "
                    "docs/operations.md)"
                )
        return warnings

    def save(self) -> None:
        """Remember the counts for the next ``mab up`` without options."""
        save_scale(self.run_dir, self.counts)

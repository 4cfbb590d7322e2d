"""What ``mab replay`` runs (:mod:`mab_cli.replay_cmd` is its command line): where to read
and write (:class:`ReplayTarget`), and the dry run, ``--verify``, ``--rebuild`` and
``--rebuild --from-timestamp`` as functions that return an :class:`Outcome`; the tests
and the replay benchmark call them directly."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from mab_cli.replay_guard import (
    ProcessorGroups,
    ensure_processors_stopped,
)
from mab_cli.replay_redis import (
    compare,
    delete_namespace,
    experiments_without_topic,
    read_namespace,
    stops_of,
    swap_in,
    write_configs,
)
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from services.decider import StickyTable
from services.projector import BucketProjection, ProjectorSettings, Retention
from services.reward_consumer import SnapshotFold
from stream_runtime.batch import Rejected, offset_field
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_connection import KafkaTarget
from stream_runtime.partition_reader import read_chunks
from stream_runtime.redis_client import AnyRedis, redis_from_url
from stream_runtime.redis_store import RedisStateStore
from stream_runtime.replay import (
    Progress,
    ReplayPlan,
    ReplayReport,
    TableMode,
    end_offsets,
    offsets_at,
    partition_sizes,
    read_configs,
    run_plans,
    split_partitions,
)
from stream_runtime.replay_pool import warm_pool

log = logging.getLogger("mab_cli.replay")


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """Where to read and write: the deployment's broker, Redis and prefixes.

    ``bootstrap`` is the whole Kafka connection (servers, TLS, SASL), or bare servers
    for a PLAINTEXT broker.
    """

    bootstrap: KafkaTarget
    redis_url: str
    topic_prefix: str
    redis_prefix: str
    retention: Retention
    workers: int = 2
    #: Groups of the processors writing the live keys: a rebuild refuses while they (or
    #: other groups reading the topics) have members. ``None``: only the latter count.
    groups: ProcessorGroups | None = None

    @classmethod
    def of(
        cls, settings: ProjectorSettings, workers: int = 2, groups: ProcessorGroups | None = None
    ) -> ReplayTarget:
        """The deployment a projector's settings describe (its environment, for the CLI):
        replay rebuilds the buckets with the projector's own retention. Raises
        ``ValueError`` for a key prefix with braces (:class:`~schemas.redis_keys.RedisKeys`)."""
        return cls(
            bootstrap=settings.connection(),
            redis_url=settings.redis_url,
            topic_prefix=settings.mab_topic_prefix,
            redis_prefix=settings.keys.prefix,
            retention=settings.retention,
            workers=workers,
            groups=groups,
        )

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.topic_prefix)

    def processors(self, redis_prefix: str) -> tuple[SnapshotFold, BucketProjection, StickyTable]:
        """The processors whose keys replay rebuilds, writing under ``redis_prefix``;
        the sticky table's rows are the live prefix's (written in place, never swapped)."""
        keys = RedisKeys(redis_prefix)
        return (
            SnapshotFold(self.topics, keys),
            BucketProjection(self.topics, keys, self.retention),
            StickyTable(self.topics, keys, RedisKeys(self.redis_prefix)),
        )

    def fields(self, partitions: int) -> list[tuple[str, int]]:
        """Every ``(topic, partition)`` replay reads."""
        t = self.topics
        return [
            (topic, p)
            for topic in (t.rewards, t.decisions, t.experiments)
            for p in range(partitions)
        ]

    def scratch_prefix(self) -> str:
        """A fresh namespace next to the live one: the live prefix (no brace, see
        :class:`~schemas.redis_keys.RedisKeys`) and hex, so each scratch key's hash tag
        is still its experiment's, and on a Redis Cluster it lies in the slot of the
        live key it replaces."""
        return f"{self.redis_prefix}replay-{uuid.uuid4().hex[:8]}-"


#: The processors' names, as the report counts by them.
FOLD: Final = SnapshotFold.name
PROJECTION: Final = BucketProjection.name
STICKY: Final = StickyTable.name


@dataclass(slots=True)
class Outcome:
    """What a replay did: counts, wall time, and (verify) the differences found."""

    report: ReplayReport
    seconds: float
    experiments: int
    differences: list[str]
    notes: list[str]
    verified: bool = False  # a --verify run (so "no differences" means "identical")

    def as_dict(self) -> dict[str, Any]:
        r = self.report
        fold, projection = FOLD, PROJECTION
        return {
            "records": r.records,
            "folded": r.applied[fold],
            "projected": r.applied[projection],
            "sticky_units": dict(r.tables),
            "experiments": self.experiments,
            "experiments_written": r.experiments_written,
            "rejected": dict(r.rejected),
            "seconds": round(self.seconds, 3),
            "records_per_s": round(r.records / self.seconds) if self.seconds else None,
            "profile_s": {
                "read": round(r.read_s, 3),
                "decode": round(r.decode_s, 3),
                "fold": round(r.apply_s.get(fold, 0.0), 3),
                "project": round(r.apply_s.get(projection, 0.0), 3),
                "sticky": round(r.apply_s.get(STICKY, 0.0), 3),
                "write": round(r.write_s, 3),
                "workers_cpu": round(r.cpu_s, 3),
            },
            "differences": self.differences,
            "notes": self.notes,
        }


def _plans(
    target: ReplayTarget,
    partitions: int,
    scratch: str,
    configs: dict[str, bytes],
    read_until: dict[str, int],
    *,
    start: dict[str, int] | None = None,
    stops: dict[str, dict[str, dict[str, int]]] | None = None,
    tables: TableMode = "count",
) -> list[ReplayPlan]:
    now = time.time()
    keys = RedisKeys(scratch)
    seeded = {exp: (keys.experiment(exp).config, raw) for exp, raw in configs.items()}
    return [
        ReplayPlan(
            bootstrap=target.bootstrap,
            redis_url=target.redis_url,
            processors=target.processors(scratch),
            configs=seeded,
            partitions=parts,
            read_until=read_until,
            now=now,
            stops=stops,
            start=start or {},
            tables=tables,
        )
        for parts in split_partitions(
            partitions, target.workers, partition_sizes(read_until, start or {})
        )
    ]


async def replay_into_scratch(
    target: ReplayTarget,
    redis: AnyRedis,
    scratch: str,
    progress: Progress,
    *,
    from_ts: float | None = None,
    stops: tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]] | None = None,
    tables: TableMode = "count",
) -> tuple[ReplayReport, int]:
    """Replay into ``scratch``; ``stops`` (consumer, projector) bound it per experiment.
    The sticky table has no stored offsets: it is replayed up to the end offsets read at
    the start, and ``tables`` says whether its rows are counted, written or compared.

    The worker processes start first (:func:`~stream_runtime.replay_pool.warm_pool`), while the
    configs and offsets are read.
    """
    with warm_pool(target.workers) as pool:
        topics = target.topics
        configs, partitions = await read_configs(target.bootstrap, topics.experiments)
        progress(f"{len(configs)} experiments in {topics.experiments}, {partitions} partitions")
        if partitions == 0:
            return ReplayReport(), 0
        fields = target.fields(partitions)
        ends = await end_offsets(target.bootstrap, fields)
        start = None if from_ts is None else await offsets_at(target.bootstrap, fields, from_ts)
        read_until = dict(ends)
        by_processor = None
        if stops is not None:
            cstops, pstops = stops
            by_processor = {FOLD: cstops, PROJECTION: pstops}
            read_until = {f: -1 for f in ends}
            for per_exp in (*cstops.values(), *pstops.values()):
                for f, o in per_exp.items():
                    if f in read_until and o > read_until[f]:
                        read_until[f] = o
            for topic, p in fields:  # the sticky table's topic, to its end
                if topic == topics.decisions:
                    read_until[offset_field(topic, p)] = ends[offset_field(topic, p)]
        raw = {exp: c.model_dump_json().encode() for exp, c in configs.items()}
        plans = _plans(
            target,
            partitions,
            scratch,
            raw,
            read_until,
            start=start,
            stops=by_processor,
            tables=tables,
        )
        report = await asyncio.to_thread(run_plans, plans, progress, pool)
        await write_configs(redis, scratch, configs)
        return report, len(configs)


async def run_verify(target: ReplayTarget, progress: Progress) -> Outcome:
    """Rebuild up to the live offsets into scratch keys and compare with the live keys."""
    started = time.perf_counter()
    redis = redis_from_url(target.redis_url)
    scratch = target.scratch_prefix()
    try:
        live = await read_namespace(redis, target.redis_prefix)
        progress(f"read {len(live.experiments)} live experiments")
        stops = (stops_of(live, "offsets"), stops_of(live, "proj:offsets"))
        report, n = await replay_into_scratch(
            target, redis, scratch, progress, stops=stops, tables="compare"
        )
        rebuilt = await read_namespace(redis, scratch)
        differences = compare(live, rebuilt) + _table_differences(report)
        return Outcome(report, time.perf_counter() - started, n, differences, [], verified=True)
    finally:
        await delete_namespace(redis, scratch)
        await redis.aclose()


def _table_differences(report: ReplayReport) -> list[str]:
    """The sticky table's missing and different live keys, the unlisted ones counted."""
    t = report.tables
    lines = [f"sticky unit {line}" for line in report.table_differences]
    more = t["missing"] + t["different"] - len(lines)
    if more > 0:
        lines.append(f"... and {more:,} more sticky units missing or different")
    return lines


def _ensure_stopped(target: ReplayTarget, progress: Progress, mode: str, force: bool) -> None:
    ensure_processors_stopped(
        target.bootstrap, target.topics, target.groups, mode=mode, force=force, progress=progress
    )


async def run_rebuild(target: ReplayTarget, progress: Progress, *, force: bool = False) -> Outcome:
    """Replay everything into scratch keys, then swap them in experiment by experiment.

    Refuses (:class:`~mab_cli.replay_guard.ProcessorsRunning`) while processors run,
    before anything is written and again just before the swap (one may have been
    started meanwhile; the scratch keys are then removed); ``force`` only warns.
    """
    started = time.perf_counter()
    _ensure_stopped(target, progress, "mab replay --rebuild", force)
    redis = redis_from_url(target.redis_url)
    scratch = target.scratch_prefix()
    try:
        report, n = await replay_into_scratch(target, redis, scratch, progress, tables="write")
        rebuilt = await read_namespace(redis, scratch)
        live = await read_namespace(redis, target.redis_prefix)
        orphans = experiments_without_topic(live, rebuilt.experiments)
        if not force:
            _ensure_stopped(target, progress, "mab replay --rebuild", force)
        swapped = await swap_in(redis, target.redis_prefix, scratch)
        progress(f"swapped in {len(swapped)} experiments")
        notes = [f"left alone (no events in the topics): {e}" for e in orphans]
        return Outcome(report, time.perf_counter() - started, n, [], notes)
    finally:
        await delete_namespace(redis, scratch)
        await redis.aclose()


async def run_dry(target: ReplayTarget, progress: Progress, from_ts: float | None) -> Outcome:
    """Replay into scratch keys, report, and remove them."""
    started = time.perf_counter()
    redis = redis_from_url(target.redis_url)
    scratch = target.scratch_prefix()
    try:
        report, n = await replay_into_scratch(target, redis, scratch, progress, from_ts=from_ts)
        return Outcome(report, time.perf_counter() - started, n, [], [])
    finally:
        await delete_namespace(redis, scratch)
        await redis.aclose()


async def _no_dead_letter(rejects: Sequence[Rejected]) -> None:
    """Rejects were dead-lettered when the live consumer first saw them."""
    return None


async def run_tail(
    target: ReplayTarget, progress: Progress, from_ts: float, *, force: bool = False
) -> Outcome:
    """Apply the records from ``from_ts`` on top of the live state with the live engine.

    The engine's stored-offset guard skips every record the live state already holds,
    so this only adds what is missing. Rejects are not dead-lettered again (the live
    consumer did when it first saw them) and change points are not re-published.
    Refuses while processors run, as :func:`run_rebuild` does (``force``: only warns).
    """
    started = time.perf_counter()
    _ensure_stopped(target, progress, "mab replay --rebuild --from-timestamp", force)
    topics = target.topics
    configs, partitions = await read_configs(target.bootstrap, topics.experiments)
    report = ReplayReport()
    if partitions == 0:
        return Outcome(report, 0.0, 0, [], [])
    fields = target.fields(partitions)
    ends = await end_offsets(target.bootstrap, fields)
    start = await offsets_at(target.bootstrap, fields, from_ts)
    redis = redis_from_url(target.redis_url)
    try:
        await write_configs(redis, target.redis_prefix, configs)
        store = RedisStateStore(redis)
        # The sticky table is left alone: the restored backup holds it, and the decider
        # keeps adding to it (SET NX) whatever the tail would.
        fold_processor, projector, _ = target.processors(target.redis_prefix)
        fold = BatchEngine(fold_processor, store, log=log, dead_letter=_no_dead_letter)
        projection = BatchEngine(projector, store, log=log)
        last_note = time.monotonic()
        async for chunk in read_chunks(target.bootstrap, start, ends, 2000):
            report.records += len(chunk)
            folded = await fold.handle([r for r in chunk if r.topic in fold.processor.decoders])
            projected = await projection.handle(chunk)
            report.applied[FOLD] += folded.applied + folded.duplicates
            report.applied[PROJECTION] += projected.applied + projected.duplicates
            report.rejected.update(folded.rejected)
            if time.monotonic() - last_note >= 1.0:
                last_note = time.monotonic()
                progress(f"{report.records:,} records applied on top of the live state")
    finally:
        await redis.aclose()
    return Outcome(report, time.perf_counter() - started, len(configs), [], [])

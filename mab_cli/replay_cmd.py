"""``mab replay``: rebuild state from the topics with the consumers' own fold and writes.

* ``mab replay`` replays into a scratch namespace, prints what it folded, and removes it;
* ``mab replay --verify`` compares that rebuild with the live keys (exit 0 only when
  identical, 1 with the differences printed);
* ``mab replay --rebuild`` makes the rebuild live (after Redis was lost or corrupted);
* ``--from-timestamp T`` starts at the first record at or after ``T`` (broker time).
  With ``--rebuild`` the records from ``T`` on are applied *on top of* the live state by
  the consumers' batch handlers, whose stored-offset check skips what the state already
  holds: the way to catch up a Redis restored from a backup taken after ``T``. Without
  it, the scratch state holds only the records from ``T`` (a partial view; it cannot be
  compared with live state, so ``--verify`` refuses it).

Both ``--rebuild`` modes refuse (exit 3, nothing written) while the reward consumer or
the projector runs (:mod:`mab_cli.replay_guard` says why); ``--force`` overrides that.
A Redis Cluster (``REDIS_URL=redis+cluster://...``) works like a single node: every key
of an experiment, scratch ones included, lies in its ``{experiment}`` slot.

The replay driver is the engine's (:mod:`stream_runtime.replay`), with the services'
processors from their packages' public entry points; reading, comparing and swapping
namespaces is :mod:`mab_cli.replay_redis`. Bad input (unreachable broker, unparsable
timestamp) is one red line and exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import typer
from confluent_kafka import KafkaException
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mab_cli.replay_guard import (
    EXIT_PROCESSORS_RUNNING,
    ProcessorGroups,
    ProcessorsRunning,
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
from stream_runtime.kafka_connection import KafkaConnectionError, KafkaTarget
from stream_runtime.partition_reader import read_chunks
from stream_runtime.redis_client import AnyRedis, RedisUrlError, explain, redis_from_url
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
from stream_runtime.settings import settings_errors

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


def parse_timestamp(value: str) -> float:
    """Unix seconds, or an ISO 8601 time (a time without zone is UTC)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither unix seconds nor ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        verify: Annotated[
            bool, typer.Option("--verify", help="Compare a rebuild with the live state.")
        ] = False,
        rebuild: Annotated[
            bool, typer.Option("--rebuild", help="Restore the live state from the topics.")
        ] = False,
        from_timestamp: Annotated[
            str | None,
            typer.Option(help="Start at this time (unix seconds or ISO 8601, UTC)."),
        ] = None,
        workers: Annotated[int, typer.Option(min=1, max=64, help="Parallel processes.")] = 2,
        force: Annotated[
            bool,
            typer.Option(
                "--force",
                help="Rebuild although consumers of the topics run (see docs/operations.md).",
            ),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Replay the topics with the consumers' fold (env: KAFKA_BOOTSTRAP_SERVERS,
        REDIS_URL, MAB_TOPIC_PREFIX, MAB_REDIS_PREFIX, MAB_PROJECTOR_RETENTION_DAYS,
        MAB_CONSUMER_GROUP_ID, MAB_PROJECTOR_GROUP_ID).

        --rebuild refuses with exit code 3 while the reward consumer or the projector
        runs; stop them first."""
        if verify and rebuild:
            raise _fail("--verify and --rebuild exclude each other")
        if force and not rebuild:
            raise _fail("--force only applies to --rebuild")
        from_ts = None if from_timestamp is None else parse_timestamp(from_timestamp)
        if verify and from_ts is not None:
            raise _fail("--verify compares a full replay; it cannot start at a timestamp")
        try:
            settings = ProjectorSettings()
        except ValidationError as exc:
            raise _fail("; ".join(settings_errors(exc, ProjectorSettings))) from None
        groups = ProcessorGroups.from_env()
        try:
            target = ReplayTarget.of(settings, workers, groups)
        except ValueError as exc:  # a key prefix with braces would move every hash tag
            raise _fail(str(exc)) from None

        def progress(message: str) -> None:
            typer.echo(f"replay: {message}", err=True)

        try:
            if verify:
                outcome = asyncio.run(run_verify(target, progress))
            elif rebuild and from_ts is not None:
                outcome = asyncio.run(run_tail(target, progress, from_ts, force=force))
            elif rebuild:
                outcome = asyncio.run(run_rebuild(target, progress, force=force))
            else:
                outcome = asyncio.run(run_dry(target, progress, from_ts))
        except ProcessorsRunning as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(EXIT_PROCESSORS_RUNNING) from None
        except (RedisUrlError, KafkaConnectionError) as exc:
            raise _fail(str(exc)) from None
        except (
            OSError,
            ConnectionError,
            RedisConnectionError,
            RedisTimeoutError,
            KafkaException,
        ) as exc:
            raise _fail(f"cannot reach Kafka or Redis: {explain(exc)}") from None
        _print(outcome, as_json)
        if verify and outcome.differences:
            raise typer.Exit(1)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _print(outcome: Outcome, as_json: bool) -> None:
    data = outcome.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(
        f"{data['records']:,} records ({data['folded']:,} folded, {data['projected']:,} "
        f"projected) of {data['experiments']} experiments in {data['seconds']} s "
        f"({data['records_per_s'] or 0:,} records/s)"
    )
    if data["rejected"]:
        typer.echo(f"rejected: {data['rejected']}")
    if data["sticky_units"]:
        typer.echo(f"sticky units: {data['sticky_units']}")
    for note in outcome.notes:
        typer.echo(note)
    if outcome.differences:
        typer.secho(f"{len(outcome.differences)} differences:", fg=typer.colors.RED)
        for line in outcome.differences:
            typer.echo(f"  {line}")
    elif outcome.verified:
        typer.echo("identical")

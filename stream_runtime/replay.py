"""Replay: the engine's fourth driver, the same processors over whole partitions.

Nothing here re-implements a rule. Records are decoded by the processors' own decoders,
applied by their own ``plan``/``apply`` through the same :class:`~stream_runtime.engine.
BatchEngine` as the live path (offset and dedupe guards included), and written by the
same Redis store (:class:`~stream_runtime.redis_store.RedisStateStore`).

Why it is fast where the live path is not: the live processors read and write Redis per
poll batch; replay applies into a :class:`~stream_runtime.state_store.MemoryStateStore`
in chunks of :data:`CHUNK_RECORDS`, decodes each chunk once for all processors, and
writes each experiment once at the end, in bulk (:meth:`~stream_runtime.redis_store.
RedisStateStore.restore`). Partitions are independent (every topic is keyed by
experiment id and co-partitioned), so they are replayed by parallel processes.

Dedupe sets are pruned once, at the end, from the whole set (the memory store keeps
every key meanwhile, ``prune=False``), exactly as replay always has: the live processors
prune per batch, so a duplicate more than 7 days after its original may be judged
differently (docs/architecture.md, "Known divergences").

Where replay stops decides what it can be compared with (:class:`ReplayPlan`): every
partition up to its end offset taken at the start, or, per processor and experiment,
exactly up to the offsets stored with the live state (``mab replay --verify``).

A table projected outside the namespaces (:class:`~stream_runtime.processor.
TableProjection`: the decider's sticky units) is not restored and swapped: its rows
(the processor's side outputs, the last one per key) are written in place with ``SET
NX`` and their remaining TTL, so a live key is never replaced, or compared with the live
keys, where a missing or different key is a difference and an extra one is not (made
after the log's end), as :attr:`ReplayPlan.tables` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from confluent_kafka import TopicPartition as RdTopicPartition

from bandit_core.fold import fold_into
from bandit_core.state import ExperimentState
from schemas.codec import DecodeError, decode
from schemas.events import ArmsAdded, ExperimentConfig, ExperimentCreated, StrategyChanged
from schemas.redis_keys import RedisKeys
from schemas.rejections import Rejection
from stream_runtime.batch import (
    DecodedBatch,
    Decoder,
    Group,
    RecordLike,
    decode_batch,
    gc_deferred,
    offset_field,
)
from stream_runtime.engine import BatchEngine
from stream_runtime.kafka_connection import KafkaTarget
from stream_runtime.kafka_metadata import METADATA_TIMEOUT_S, metadata_client, partition_count
from stream_runtime.partition_reader import read_chunks
from stream_runtime.processor import Processor, TableProjection, TableRow
from stream_runtime.redis_client import AnyRedis, redis_from_url
from stream_runtime.redis_store import RedisStateStore
from stream_runtime.replay_pool import warm_pool
from stream_runtime.state_store import MemoryStateStore

#: Records per fetch while replaying, at most: large, so per-chunk overhead vanishes.
CHUNK_RECORDS: Final = 50_000
#: Dedupe keys per bulk-load command: one ZADD blocks Redis while it runs, so chunks
#: keep each block to some tens of milliseconds for the other clients.
SEEN_PER_WRITE: Final = 25_000
#: Table rows per pipeline (``SET NX`` or ``GET``): one round trip each, small commands.
ROWS_PER_PIPELINE: Final = 10_000
#: Table differences listed per worker; the rest are counted.
TABLE_DIFFERENCES_SHOWN: Final = 100
#: What replay does with table rows: count them (a dry run), write them (``SET NX``, a
#: rebuild), or compare them with the live keys (verify).
TableMode = Literal["count", "write", "compare"]
#: ``Stops`` maps experiment id -> offset field -> last offset (inclusive) to apply.
Stops = dict[str, dict[str, int]]
Progress = Callable[[str], None]

log = logging.getLogger("stream_runtime.replay")


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What one worker replays (picklable: it crosses a process boundary).

    The processors name their keys under the target namespace. ``configs`` maps every
    known experiment to its config key and value (read by the processors, not written
    back; an experiment without one is skipped as the live processors skip it).
    ``read_until`` is the last offset to read per ``topic:partition``, ``start`` the
    first (absent: the beginning); ``stops`` bound, per processor name and experiment,
    the records that processor applies (absent: everything read). ``tables`` is what
    becomes of table rows (:data:`TableMode`).
    """

    bootstrap: KafkaTarget
    redis_url: str
    processors: tuple[Processor[Any], ...]
    configs: dict[str, tuple[str, bytes]]
    partitions: tuple[int, ...]
    read_until: dict[str, int]
    now: float
    stops: dict[str, Stops] | None = None
    start: dict[str, int] = field(default_factory=dict)
    chunk_records: int = CHUNK_RECORDS
    tables: TableMode = "count"


@dataclass(slots=True)
class ReplayReport:
    """Counts of one replay (summed over workers) and where the time went."""

    records: int = 0
    #: Records handed to each processor, by processor name.
    applied: Counter[str] = field(default_factory=Counter)
    experiments_written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    read_s: float = 0.0
    decode_s: float = 0.0
    apply_s: dict[str, float] = field(default_factory=dict)  # by processor name
    write_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the worker processes (Kafka client included)
    #: Table rows: ``rows`` projected, ``expired`` by the time of writing, ``written``
    #: and ``kept`` (a live key was there) by a rebuild, ``missing`` and ``different``
    #: live keys found by a verify.
    tables: Counter[str] = field(default_factory=Counter)
    #: The first missing or different live keys (verify), one line each.
    table_differences: list[str] = field(default_factory=list)

    def add(self, other: ReplayReport) -> None:
        self.records += other.records
        self.applied.update(other.applied)
        self.experiments_written += other.experiments_written
        self.rejected.update(other.rejected)
        self.read_s += other.read_s
        self.decode_s += other.decode_s
        for name, seconds in other.apply_s.items():
            self.apply_s[name] = self.apply_s.get(name, 0.0) + seconds
        self.write_s += other.write_s
        self.cpu_s += other.cpu_s
        self.tables.update(other.tables)
        self.table_differences.extend(other.table_differences)


def _topic(name: str) -> str:
    return name.rpartition(":")[0]


def select(group: Group, topics: Mapping[str, Decoder], stops: Mapping[str, int] | None) -> Group:
    """The records of ``group`` from ``topics`` at or below their partition's stop
    (``None``: no stop); the group itself when that is all of them."""
    if all(
        _topic(name) in topics and (stops is None or last <= stops.get(name, -1))
        for name, last in group.last.items()
    ):
        return group
    out = Group()
    for record, event in zip(group.records, group.events, strict=True):
        name = offset_field(record.topic, record.partition)
        if record.topic in topics and (stops is None or record.offset <= stops.get(name, -1)):
            out.add(record, event, name)
    return out


class PartitionReplayer:
    """Applies the records of some partitions in memory, then writes them to Redis."""

    def __init__(self, plan: ReplayPlan, progress: Progress = _quiet) -> None:
        self.plan = plan
        self.progress = progress
        self.report = ReplayReport()
        self.state = MemoryStateStore(prune=False)
        self.seeded = {key for key, _ in plan.configs.values()}
        for key, raw in plan.configs.values():
            self.state.strings[key] = raw
        self.engines = [BatchEngine(p, self.state, log=log, cache_bytes=0) for p in plan.processors]
        self.decoders: dict[str, Decoder] = {}
        for p in plan.processors:
            self.decoders.update(p.decoders)
        self.tables = {p.name: p for p in plan.processors if isinstance(p, TableProjection)}
        #: Processor name -> key -> the last row projected for it.
        self.rows: dict[str, dict[str, TableRow]] = {name: {} for name in self.tables}

    async def apply(self, records: Sequence[RecordLike]) -> None:
        """Decode one chunk once, then apply it with every processor (any partitions,
        log order). Runs with the cyclic collector off (held off by :meth:`run`)."""
        plan, report = self.plan, self.report
        t0 = time.perf_counter()
        decoded = decode_batch(records, self.decoders)
        report.decode_s += time.perf_counter() - t0
        report.rejected.update(r.reason for r in decoded.rejected)
        known: dict[str, Group] = {}
        for exp, group in decoded.groups.items():
            if exp in plan.configs:
                known[exp] = group
            else:  # the live processors write nothing for an experiment without config
                report.rejected[Rejection.UNKNOWN_EXPERIMENT] += len(group)
        for engine in self.engines:
            name = engine.processor.name
            stops = None if plan.stops is None else plan.stops.get(name)
            topics = engine.processor.decoders
            groups: dict[str, Group] = {}
            for exp, group in known.items():
                mine = select(group, topics, None if stops is None else stops.get(exp, {}))
                if mine.records:
                    groups[exp] = mine
                    report.applied[name] += len(mine)
            t1 = time.perf_counter()
            _, outputs = await engine.apply(DecodedBatch(groups), plan.now)
            rows = self.rows.get(name)
            if rows is not None:
                for row in outputs:
                    if isinstance(row, TableRow):
                        rows[row.key] = row
            report.apply_s[name] = report.apply_s.get(name, 0.0) + time.perf_counter() - t1

    async def read(self) -> None:
        """Read every assigned partition from its start up to ``read_until``."""
        plan = self.plan
        fields = [offset_field(t, p) for t in self.decoders for p in plan.partitions]
        until = {f: plan.read_until[f] for f in fields if plan.read_until.get(f, -1) >= 0}
        total = 0
        last_note = time.monotonic()
        t0 = time.perf_counter()
        async for chunk in read_chunks(plan.bootstrap, plan.start, until, plan.chunk_records):
            self.report.read_s += time.perf_counter() - t0
            self.report.records += len(chunk)
            total += len(chunk)
            await self.apply(chunk)
            if time.monotonic() - last_note >= 1.0:
                last_note = time.monotonic()
                self.progress(f"partitions {list(plan.partitions)}: {total:,} records")
            t0 = time.perf_counter()

    def experiment_keys(self) -> dict[str, list[str]]:
        """Experiment id -> the keys the processors wrote for it (configs excluded)."""
        keys = RedisKeys()
        out: dict[str, list[str]] = {}
        state = self.state
        for key in (*state.strings, *state.hashes, *state.zsets):
            if key in self.seeded:
                continue
            exp = _experiment_of(key, keys)
            if exp is not None:
                out.setdefault(exp, []).append(key)
        return out

    async def write(self) -> None:
        """Write each experiment once, through the engine's Redis store."""
        t0 = time.perf_counter()
        redis = redis_from_url(self.plan.redis_url, decode_responses=False)
        try:
            store = RedisStateStore(redis)
            for exp, keys in self.experiment_keys().items():
                await store.restore(exp, self.state, keys, self.plan.now, chunk=SEEN_PER_WRITE)
                self.report.experiments_written += 1
            for name, rows in self.rows.items():
                await self.write_table(redis, self.tables[name], rows)
        finally:
            await redis.aclose()
        self.report.write_s += time.perf_counter() - t0

    async def write_table(
        self, redis: AnyRedis, table: TableProjection[Any], rows: Mapping[str, TableRow]
    ) -> None:
        """Write (``SET NX`` with the remaining TTL) or compare one table's rows, as the
        plan says; rows expired by now are neither (the live key is gone or going)."""
        counts, mode = self.report.tables, self.plan.tables
        now = time.time()
        live = [r for r in rows.values() if r.expires_at is None or r.expires_at > now]
        counts["rows"] += len(rows)
        counts["expired"] += len(rows) - len(live)
        if mode == "count":
            return
        for lo in range(0, len(live), ROWS_PER_PIPELINE):
            chunk = live[lo : lo + ROWS_PER_PIPELINE]
            pipe = redis.pipeline(transaction=False)
            for row in chunk:
                if mode == "compare":
                    pipe.get(row.key)
                elif row.expires_at is None:
                    pipe.set(row.key, row.value, nx=True)
                else:
                    pipe.set(row.key, row.value, nx=True, pxat=round(row.expires_at * 1000))
            results = await pipe.execute()
            for row, result in zip(chunk, results, strict=True):
                if mode == "write":
                    counts["written" if result else "kept"] += 1
                elif result is None:
                    self._table_difference(
                        "missing", f"{row.key}: missing (log: {_text(row.value)})"
                    )
                elif not table.same_row(result, row.value):
                    self._table_difference(
                        "different", f"{row.key}: {_text(result)} (log: {_text(row.value)})"
                    )

    def _table_difference(self, kind: str, line: str) -> None:
        self.report.tables[kind] += 1
        if len(self.report.table_differences) < TABLE_DIFFERENCES_SHOWN:
            self.report.table_differences.append(line)

    async def run(self) -> ReplayReport:
        """Read everything, then write, with the cyclic collector off throughout.

        As in the engine (see :func:`stream_runtime.batch.gc_deferred`): replay keeps a
        large, growing heap (states, dedupe keys), and young-generation passes triggered
        by a chunk's fresh events would promote them and set off full collections over
        all of it. Reading creates a message and a record per event too, and the passes
        those allocations trigger cost ~2.3 us per event in a read-only run of 1M events.
        Replay creates no cyclic garbage worth collecting before it ends.
        """
        started = time.process_time()
        with gc_deferred():
            await self.read()
            await self.write()
        self.report.cpu_s += time.process_time() - started
        return self.report


def _text(raw: bytes) -> str:
    return raw.decode(errors="replace")


def _experiment_of(key: str, keys: RedisKeys) -> str | None:
    """The experiment of a key of any prefix (its ``{hash tag}``)."""
    _, sep, rest = key.partition("mab:{")
    if not sep:
        return None
    found = keys.split("mab:{" + rest)
    return None if found is None else found[0]


def run_plan(plan: ReplayPlan) -> ReplayReport:
    """Entry point of a worker process (progress goes to stderr)."""

    def note(msg: str) -> None:
        print(f"replay: {msg}", file=sys.stderr, flush=True)

    return asyncio.run(PartitionReplayer(plan, note).run())


def run_plans(
    plans: list[ReplayPlan],
    progress: Progress = _quiet,
    pool: ProcessPoolExecutor | None = None,
) -> ReplayReport:
    """Run plans in parallel processes (one plan: in this process), in ``pool`` when
    given (see :func:`warm_pool`)."""
    total = ReplayReport()
    if len(plans) == 1:
        total.add(asyncio.run(PartitionReplayer(plans[0], progress).run()))
        return total
    if pool is None:
        with warm_pool(len(plans)) as own:
            return run_plans(plans, progress, own)
    for report in pool.map(run_plan, plans):
        total.add(report)
    return total


def high_watermarks(bootstrap: KafkaTarget, fields: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Offset after the last record (``topic:partition`` -> high watermark)."""
    with metadata_client(bootstrap, "replay") as consumer:
        return {
            offset_field(t, p): consumer.get_watermark_offsets(
                RdTopicPartition(t, p), timeout=METADATA_TIMEOUT_S
            )[1]
            for t, p in fields
        }


def _offsets_for_time(
    bootstrap: KafkaTarget, fields: Sequence[tuple[str, int]], ts_ms: int
) -> dict[str, int]:
    """First offset with a timestamp at or after ``ts_ms`` (-1: none)."""
    with metadata_client(bootstrap, "replay") as consumer:
        found = consumer.offsets_for_times(
            [RdTopicPartition(t, p, ts_ms) for t, p in fields], timeout=METADATA_TIMEOUT_S
        )
    return {offset_field(tp.topic, tp.partition): tp.offset for tp in found}


async def end_offsets(bootstrap: KafkaTarget, fields: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Last offset (inclusive; -1 when empty) of every ``(topic, partition)``."""
    ends = await asyncio.to_thread(high_watermarks, bootstrap, fields)
    return {f: end - 1 for f, end in ends.items()}


async def offsets_at(
    bootstrap: KafkaTarget, fields: Sequence[tuple[str, int]], ts: float
) -> dict[str, int]:
    """First offset at or after unix time ``ts`` per partition (broker timestamps); the
    end of the partition when every record is older."""
    found = await asyncio.to_thread(_offsets_for_time, bootstrap, fields, int(ts * 1000))
    ends = await asyncio.to_thread(high_watermarks, bootstrap, fields)
    return {f: (ends[f] if found.get(f, -1) < 0 else found[f]) for f in ends}


def fold_configs(events: Iterable[object]) -> dict[str, ExperimentConfig]:
    """The configuration of every experiment, folded from experiments-topic events.

    Uses the fold itself (highest version wins), so replay rebuilds exactly the config
    the consumer and the decider agree on.
    """
    states: dict[str, ExperimentState] = {}
    for event in events:
        if not isinstance(event, ExperimentCreated | ArmsAdded | StrategyChanged):
            continue
        exp = event.experiment_id
        state = states.get(exp)
        if state is None:
            state = states[exp] = ExperimentState(experiment_id=exp)
        fold_into(state, (event,))
    return {exp: s.config for exp, s in states.items() if s.config is not None}


async def read_configs(
    bootstrap: KafkaTarget, topic: str
) -> tuple[dict[str, ExperimentConfig], int]:
    """Fold the whole experiments topic into configs; also returns its partition count."""
    count = await asyncio.to_thread(partition_count, bootstrap, topic)
    if count == 0:
        return {}, 0
    ends = await end_offsets(bootstrap, [(topic, p) for p in range(count)])
    # Read with the same partition-EOF-aware reader as the replay itself.
    until = {f: last for f, last in ends.items() if last >= 0}
    events: list[object] = []
    async for chunk in read_chunks(bootstrap, {}, until, 10_000):
        for r in chunk:
            if r.value is None:
                continue
            with contextlib.suppress(DecodeError):
                events.append(decode(r.value))
    return fold_configs(events), count


def split_partitions(
    partitions: int, workers: int, sizes: Mapping[int, int] | None = None
) -> list[tuple[int, ...]]:
    """Partitions dealt to at most ``workers`` workers (none left empty).

    Without ``sizes``, round-robin. With the number of records to read per partition,
    largest first to the least loaded worker: experiments hash unevenly onto partitions
    (48 experiments on 6 partitions gave one of two workers 60 % of the records), and
    the replay lasts as long as its busiest worker.
    """
    workers = max(1, min(workers, partitions))
    if sizes is None:
        return [tuple(range(w, partitions, workers)) for w in range(workers)]
    loads = [0] * workers
    dealt: list[list[int]] = [[] for _ in range(workers)]
    for p in sorted(range(partitions), key=lambda p: (-sizes.get(p, 0), p)):
        w = min(range(workers), key=lambda w: (loads[w], w))
        loads[w] += sizes.get(p, 0)
        dealt[w].append(p)
    return [tuple(sorted(parts)) for parts in dealt if parts]


def partition_sizes(read_until: Mapping[str, int], start: Mapping[str, int]) -> dict[int, int]:
    """Records to read per partition number, summed over the topics (``topic:partition``
    fields; a partition without a start is read from offset 0, or its log start)."""
    sizes: dict[int, int] = {}
    for f, last in read_until.items():
        part = int(f.rpartition(":")[2])
        sizes[part] = sizes.get(part, 0) + max(0, last + 1 - start.get(f, 0))
    return sizes

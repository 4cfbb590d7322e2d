"""The engine: a batch of records through a processor into a state store, exactly once.

``BatchEngine.handle(records)`` is one batch of any driver (the Kafka loop of
:mod:`stream_runtime.kafka_loop`, replay's tail, tests with hand-made records):

decode (the processor's decoders, a whole batch at once) -> per experiment: plan ->
load (one round trip for the batch, or the cache) -> drop records at or below the
offsets stored with the state -> apply (the processor, pure) -> dead-letter what it
skipped -> one compare-and-set write per experiment (state changes + new offsets + new
dedupe keys) -> retry the refused ones -> hand the side outputs over. The caller commits
its Kafka offsets only after ``handle`` returned; why that order makes at-least-once
delivery an exactly-once fold is argued at
:meth:`stream_runtime.kafka_loop.KafkaBatchProcessor._process`.

**The offset guard.** A record at or below the offset stored *with* the state (in the
same atomic write) was applied to that state already: the consumer crashed or lost the
partition after the write but before the Kafka commit. It is dropped before the
processor sees it, so a redelivery is a no-op. Every record that reached the processor
moves the offsets, skipped ones included: a record's outcome is decided once, so its
redelivery is never re-judged against a newer config (an arm added later would
otherwise flip a rejection).

**The dedupe guard.** Independent of offsets, a processor names each event's dedupe
keys (``plan``: the keys to look up; ``apply``: the new ones with their event time);
the engine looks them up, stores the new ones in the same write, and forgets keys older
than :data:`~stream_runtime.processor.DEDUPE_HORIZON_S` before the newest event time of
the write (clamped to the wall clock, so one far-future ``ts`` cannot wipe them). So a
retried producer record, or a record sent over the API and straight into Kafka, is
applied once within the horizon, whatever path it took.

**The cache.** After a write lands, the engine keeps what it stored of the experiment
(the string keys the processor reads, as written or as read, and the whole offsets
hash). The next batch of that experiment is applied from them without a read, assuming
none of its dedupe keys and looked-up members exist; the write carries those
assumptions and the store checks them in the same atomic step as the compare-and-set
(:class:`~stream_runtime.state_store.Assumptions`). If anything differs (another
consumer wrote, a duplicate record, a new arm in the config, a wiped or restored Redis)
the write is refused and the experiment is re-read and re-applied at once. So the cache
is never trusted, only checked: a write from it lands exactly when one from a fresh read
would have produced the same write. An apply that drops records by the offset guard or
skips a record takes the read path (whether a record was applied is a fact about the
store, not about our last write; and a skipped record is dead-lettered before the write,
which a refused write with a newer config could have applied).

**Skipped records** go to the dead-letter sink before the point after which they would
not come back: decode rejects before anything is written, the processor's skips before
the write that stores the offsets past them. Both are acknowledged before ``handle``
returns, i.e. before the Kafka commit. A batch retried after a failure may dead-letter a
record twice; the DLQ's readers dedupe by source position. Without a sink they are
counted and logged once per batch.

**Side outputs** (the reward consumer's change points) are handed to their sink after
every write of the batch landed and before ``handle`` returns: at least once, before the
commit. With ``outputs_first`` they are handed over *before* the write that stores the
offsets past their records instead (after the dead letters): for a processor whose
outputs are its result (the exposure judge's decisions) and whose state only records
that they were sent. A crash or a refused write between the two sends them again on the
retry, identical (a processor's outputs are a pure function of its inputs); never none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic

from stream_runtime.batch import (
    MAX_CAS_ATTEMPTS,
    CasConflictError,
    DeadLetterSink,
    DecodedBatch,
    Group,
    RecordLike,
    Rejected,
    decode_batch,
    gc_deferred,
    offset_field,
)
from stream_runtime.processor import Applied, Loaded, Processor, Reads, ReportT
from stream_runtime.state_store import Assumptions, LoadRequest, StateStore, Write

#: Bytes of state values the cache keeps (least recently written experiments dropped
#: first). A reward consumer's snapshot is ~1.1 KiB per arm, so this holds e.g. 5,000
#: experiments of 10 arms, or 50 of 1,000 arms.
CACHE_BYTES: Final = 64 * 1024 * 1024

#: Where side outputs go (the reward consumer publishes change points).
OutputSink = Callable[[Sequence[Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Cached:
    """What the engine's last landed write of an experiment stored."""

    values: dict[str, bytes | None]  # the string keys the processor reads
    offsets: dict[str, int]  # the whole offsets hash after that write
    size: int


@dataclass(slots=True)
class _Plan(Generic[ReportT]):
    """One experiment's apply: the write (if any), its outcome and what it read."""

    reads: Reads
    loaded: Loaded
    redelivered: int = 0
    applied: Applied[ReportT] | None = None
    write: Write | None = None
    rejects: list[Rejected] = field(default_factory=list)


@dataclass(slots=True)
class _Batch(Generic[ReportT]):
    """One call's running outcome: its report, rejects and outputs, and the positions
    already handed to the dead-letter sink (a conflicted experiment is re-applied and
    would otherwise send the same rejects again)."""

    report: ReportT
    rejects: list[Rejected] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    parked: set[tuple[str, int, int]] = field(default_factory=set)


def fresh_records(group: Group, applied: Mapping[str, int]) -> tuple[Group, int]:
    """The records of ``group`` beyond the applied offsets, and how many were dropped.

    One comparison per partition when nothing is at or below its offset (the common
    case): then the group itself is fresh.
    """
    if all(low > applied.get(name, -1) for name, low in group.first.items()):
        return group, 0
    fresh = Group()
    for record, event in zip(group.records, group.events, strict=True):
        name = offset_field(record.topic, record.partition)
        if record.offset > applied.get(name, -1):
            fresh.add(record, event, name)
    return fresh, len(group) - len(fresh)


class BatchEngine(Generic[ReportT]):
    """Applies batches of one processor to one state store (see the module docstring)."""

    def __init__(
        self,
        processor: Processor[ReportT],
        store: StateStore,
        *,
        log: logging.Logger,
        dead_letter: DeadLetterSink | None = None,
        outputs: OutputSink | None = None,
        skipped_message: str = "records skipped",
        cache_bytes: int = CACHE_BYTES,
        outputs_first: bool = False,
    ) -> None:
        """``dead_letter`` ``None``: skipped records are counted and logged once per
        batch with ``skipped_message``. ``cache_bytes=0`` turns the cache off.
        ``outputs_first``: hand side outputs over before the writes (module docstring)."""
        self.processor = processor
        self.store = store
        self.log = log
        self.dead_letter = dead_letter
        self.outputs = outputs
        self.skipped_message = skipped_message
        self.cache_bytes = cache_bytes
        self.outputs_first = outputs_first
        #: Event-time watermark: the newest event time of any record handled so far.
        self.watermark = 0.0
        #: Experiment id -> its last landed write; the dict's order is recency of writes.
        self._cache: dict[str, _Cached] = {}
        self._cached_bytes = 0

    # ----------------------------------------------------------------- cache
    def forget(self, experiment_id: str | None = None) -> None:
        """Drop one experiment's cache entry, or all of them (a rebalance)."""
        if experiment_id is None:
            self._cache.clear()
            self._cached_bytes = 0
            return
        entry = self._cache.pop(experiment_id, None)
        if entry is not None:
            self._cached_bytes -= entry.size

    def _remember(self, exp: str, plan: _Plan[ReportT]) -> None:
        """Cache what a landed write stored, dropping the least recently written
        experiments beyond :attr:`cache_bytes`."""
        self.forget(exp)
        w = plan.write
        if w is None or self.cache_bytes <= 0:
            return
        written = w.changes.set
        values = {k: written.get(k, plan.loaded.values[k]) for k in plan.reads.get}
        size = sum(len(v) for v in values.values() if v is not None) + 64 * len(values)
        if size > self.cache_bytes:
            return
        self._cache[exp] = _Cached(values, {**w.expected, **w.new}, size)
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            self.forget(next(iter(self._cache)))

    # ----------------------------------------------------------------- planning
    def _plan(
        self,
        exp: str,
        group: Group,
        reads: Reads,
        loaded: Loaded,
        now: float,
        assumed: Assumptions | None,
    ) -> _Plan[ReportT]:
        """Offset-filter and apply one experiment's records (no I/O)."""
        plan: _Plan[ReportT] = _Plan(reads, loaded)
        fresh, plan.redelivered = fresh_records(group, loaded.offsets)
        if not fresh.records:
            return plan
        applied = self.processor.apply(exp, fresh.events, loaded, now)
        plan.applied = applied
        plan.rejects = [Rejected(fresh.records[s.at], s.reason, s.detail) for s in applied.skipped]
        if applied.changes is not None:
            guard = self.processor.guard(exp)
            plan.write = Write(
                experiment_id=exp,
                offsets=guard.offsets,
                expected=loaded.offsets,
                new=fresh.last,
                seen=guard.seen,
                new_seen=applied.new_seen,
                changes=applied.changes,
                assumed=assumed,
            )
        return plan

    def _plan_cached(
        self, exp: str, group: Group, entry: _Cached, now: float
    ) -> _Plan[ReportT] | None:
        """Apply from the cache, or ``None`` where only a read can decide (no I/O)."""
        if not all(low > entry.offsets.get(name, -1) for name, low in group.first.items()):
            return None
        reads = self.processor.plan(exp, group.events)
        if not all(k in entry.values for k in reads.get):
            return None
        values = {k: entry.values[k] for k in reads.get}
        guard = self.processor.guard(exp)
        assumed = Assumptions(values, {guard.seen: reads.seen, **reads.members})
        plan = self._plan(exp, group, reads, Loaded(entry.offsets, values), now, assumed)
        if plan.rejects or plan.write is None:
            return None
        return plan

    # ----------------------------------------------------------------- batches
    def decode(self, records: Iterable[RecordLike]) -> DecodedBatch:
        """Decode a batch with the processor's decoders: the first step of :meth:`handle`.

        Pure (no I/O, no engine or processor state read or changed), so a driver may
        run it ahead, e.g. for the next batch while this one's write is awaited
        (:meth:`stream_runtime.kafka_loop.KafkaBatchProcessor._process`).
        """
        return decode_batch(records, self.processor.decoders)

    async def handle(
        self,
        records: Sequence[RecordLike],
        now: float | None = None,
        *,
        decoded: DecodedBatch | None = None,
    ) -> ReportT:
        """Decode and apply one batch; raises on I/O errors (the caller retries).

        ``decoded``: what :meth:`decode` made of these same ``records``, if the caller
        decoded them ahead; else they are decoded here.

        The cyclic collector is held off while the batch is decoded, applied and
        written (see :func:`stream_runtime.batch.gc_deferred`): :meth:`_decode_apply`
        has returned, so its frame and most of the batch's objects are freed, before the
        collector runs again (with the decoded batch still alive, re-enabling it cost a
        tenth of the handler's time: the first pass scanned it). The side outputs (which
        may wait for a broker) are handed over with it on.
        """
        with gc_deferred():
            report, outputs = await self._decode_apply(records, now, decoded)
        if outputs and self.outputs is not None:
            await self.outputs(outputs)
        return report

    async def _decode_apply(
        self, records: Sequence[RecordLike], now: float | None, decoded: DecodedBatch | None
    ) -> tuple[ReportT, list[Any]]:
        if decoded is None:
            decoded = self.decode(records)
        return await self.apply(decoded, now, records=len(records))

    async def apply(
        self, decoded: DecodedBatch, now: float | None = None, *, records: int = 0
    ) -> tuple[ReportT, list[Any]]:
        """Apply a decoded batch until every experiment's write landed (or needed none);
        its report and side outputs (not yet handed over)."""
        batch: _Batch[ReportT] = _Batch(self.processor.new_report())
        report = batch.report
        report.records = records
        report.ignored = decoded.ignored
        await self._park(batch, decoded.rejected)
        for r in decoded.rejected:
            report.rejected[r.reason] += 1
            batch.rejects.append(r)
        pending = decoded.groups
        for _attempt in range(MAX_CAS_ATTEMPTS):
            if not pending:
                break
            t = time.time() if now is None else now
            conflicted = await self._attempt(pending, t, batch)
            if conflicted:
                report.conflicts += len(conflicted)
                self.log.warning(
                    "offset compare-and-set conflict, reloading",
                    extra={"experiments": sorted(conflicted)},
                )
            pending = {exp: pending[exp] for exp in conflicted}
        if pending:
            raise CasConflictError(f"experiments kept conflicting: {sorted(pending)}")
        if decoded.newest > self.watermark:
            self.watermark = decoded.newest
        if batch.rejects and self.dead_letter is None:
            first = batch.rejects[0].record
            self.log.info(
                self.skipped_message,
                extra={
                    "skipped": dict(report.rejected),
                    "first": f"{first.topic}:{first.partition}:{first.offset}",
                },
            )
        return report, batch.outputs

    async def _park(self, batch: _Batch[ReportT], rejects: Iterable[Rejected]) -> None:
        """Hand rejects to the dead-letter sink, each position once per call."""
        if self.dead_letter is None:
            return
        fresh = []
        for r in rejects:
            pos = (r.record.topic, r.record.partition, r.record.offset)
            if pos not in batch.parked:
                batch.parked.add(pos)
                fresh.append(r)
        if fresh:
            await self.dead_letter(fresh)

    async def _emit_first(self, plans: Iterable[_Plan[ReportT]]) -> None:
        """With ``outputs_first``: the plans' outputs to their sink, before their writes."""
        if not self.outputs_first or self.outputs is None:
            return
        outputs = [o for p in plans if p.applied is not None for o in p.applied.outputs]
        if outputs:
            await self.outputs(outputs)

    def _accept(
        self, plans: Mapping[str, _Plan[ReportT]], failed: set[str], batch: _Batch[ReportT]
    ) -> None:
        """Keep the outcome of every experiment whose write landed (or needed none)."""
        report = batch.report
        for exp, plan in plans.items():
            if exp in failed:
                self.forget(exp)
                continue
            report.redelivered += plan.redelivered
            if plan.applied is not None:
                report.add(plan.applied.report)
                if not self.outputs_first:
                    batch.outputs.extend(plan.applied.outputs)
            report.experiments_written += plan.write is not None
            for r in plan.rejects:
                report.rejected[r.reason] += 1
                batch.rejects.append(r)
            if plan.write is not None:
                self._remember(exp, plan)

    async def _attempt(
        self, pending: Mapping[str, Group], now: float, batch: _Batch[ReportT]
    ) -> set[str]:
        """One round: cached applies first, then read -> apply -> dead-letter -> write for
        the rest. Returns the experiments whose write was refused (re-read next round)."""
        report = batch.report
        # 1. Experiments we wrote last: apply from the cache, write with assumptions. A
        #    refused write costs one extra round trip and falls through to step 2.
        cached: dict[str, _Plan[ReportT]] = {}
        to_read: dict[str, Group] = {}
        for exp, group in pending.items():
            entry = self._cache.get(exp)
            plan = None if entry is None else self._plan_cached(exp, group, entry, now)
            if plan is None:
                to_read[exp] = group
            else:
                cached[exp] = plan
        if cached:
            await self._emit_first(cached.values())
            writes = [p.write for p in cached.values() if p.write is not None]
            refused = set(await self.store.write(writes, now))
            self._accept(cached, refused, batch)
            report.cache_hits += len(cached) - len(refused)
            report.cache_misses += len(refused)
            for exp in refused:
                to_read[exp] = pending[exp]
        if not to_read:
            return set()
        # 2. The rest: read -> offset guard -> apply -> dead-letter -> compare-and-set.
        requests: dict[str, LoadRequest] = {}
        for exp, group in to_read.items():
            guard = self.processor.guard(exp)
            reads = self.processor.plan(exp, group.events)
            requests[exp] = LoadRequest(guard.offsets, guard.seen, reads)
        loaded = await self.store.load(requests)
        plans = {
            exp: self._plan(exp, group, requests[exp].reads, loaded[exp], now, None)
            for exp, group in to_read.items()
        }
        await self._park(batch, (r for p in plans.values() for r in p.rejects))
        await self._emit_first(plans.values())
        writes = [p.write for p in plans.values() if p.write is not None]
        conflicted = set(await self.store.write(writes, now))
        self._accept(plans, conflicted, batch)
        return conflicted

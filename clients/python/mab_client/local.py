"""Local mode: decisions made in-process from the last allocation, exposures reported in batches.

A storefront page render cannot afford a network hop per decision. In local mode the
client fetches an experiment's allocation (``GET /experiments/{id}/allocation``) once,
decides every unit with the assignment rule (:mod:`mab_client.assignment`, the same
function the server validates with), and buffers one exposure per decision; a
background worker flushes the buffer to ``POST /exposures`` in batches and refreshes
each allocation when its version ends (with ``If-None-Match``: an unchanged one is a
bodyless 304).

This module holds what both clients share and does no I/O: :class:`LocalState` (the
held allocations, the exposure buffer, the metrics) and :class:`LocalSettings`. The
sync client runs its worker in a daemon thread, the async one in a task; both call
the state's methods.

When the server is unreachable the client keeps deciding from the allocation it holds
(its version stays valid on the server for the allocation retention, a day by
default), says so (:attr:`LocalMetrics.stale`, one warning per outage) and keeps the
exposures, up to :attr:`LocalSettings.max_buffer`; beyond that the oldest are dropped
and counted (:attr:`LocalMetrics.dropped`), because a storefront must never block or
grow without bound for the sake of its reports.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from mab_client.assignment import Allocation, LocalDecision
from mab_client.calls import AllocationFetch
from mab_client.errors import InvalidAllocationError, RequestValidationError
from mab_client.models import AllocationPublic, ExposureCreate

log = logging.getLogger("mab_client")

#: A buffered exposure: experiment id, unit id, arm id, allocation version, sequence
#: number (the exposure id's tail), ts.
Pending = tuple[str, str, str, int, int, float]

#: Most exposures one ``POST /exposures`` may carry (the server's default
#: ``MAB_MAX_REWARD_BATCH``).
MAX_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """How local mode buffers, flushes and refreshes (``MabClient(..., local=True)``)."""

    #: A flush starts once this many exposures wait (at most :data:`MAX_BATCH` per request).
    flush_size: int = MAX_BATCH
    #: ... or once the oldest has waited this long (seconds).
    flush_interval_s: float = 1.0
    #: Exposures kept while the server is unreachable; beyond, the oldest are dropped.
    max_buffer: int = 100_000
    #: An allocation is refreshed this long after its version ends, plus up to as much
    #: again at random, so that clients do not all ask at the epoch boundary.
    refresh_delay_s: float = 0.5
    #: After a failed refresh or flush, the next try waits this long, doubling up to 30 s.
    retry_after_failure_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.flush_size <= MAX_BATCH:
            raise ValueError(f"flush_size must be 1..{MAX_BATCH}, got {self.flush_size}")
        if self.max_buffer < self.flush_size:
            raise ValueError("max_buffer must be at least flush_size")
        if self.flush_interval_s <= 0 or self.refresh_delay_s < 0:
            raise ValueError("flush_interval_s must be > 0 and refresh_delay_s >= 0")
        if self.retry_after_failure_s <= 0:
            raise ValueError("retry_after_failure_s must be > 0")


@dataclass(slots=True)
class LocalMetrics:
    """What local mode did (plain counters, read them any time; a metrics exporter can
    publish them).

    ``decisions`` made; exposures ``sent`` (accepted as new decisions), ``duplicates``
    (the server had them: a retried batch), ``rejected`` (refused by the server, e.g. a
    version past its retention: not retried) and ``dropped`` (oldest first, the buffer
    was full); failed flushes and refreshes; ``stale``: the last contact with the server
    failed, so decisions come from the last allocation held, which may be older than the
    bandit's current one; ``last_contact``: unix time of the last fetch or flush that
    reached the server.
    """

    decisions: int = 0
    sent: int = 0
    duplicates: int = 0
    rejected: int = 0
    stale: bool = False
    dropped: int = 0
    flush_failures: int = 0
    refresh_failures: int = 0
    last_contact: float = 0.0


@dataclass(slots=True)
class Held:
    """One experiment's allocation as held by the client."""

    allocation: Allocation
    etag: str | None
    #: Unix time of the next refresh attempt.
    refresh_at: float
    failures: int = 0


def allocation_of(public: AllocationPublic) -> Allocation:
    """The assignment rule over an allocation answered by the server."""
    if public.hash.algorithm != "mab-race-sha256-v1":
        raise InvalidAllocationError(
            f"allocation of {public.experiment_id!r} uses {public.hash.algorithm!r}, which "
            "this SDK does not implement; upgrade mab-optimizer-client"
        )
    return Allocation(
        experiment_id=public.experiment_id,
        version=public.version,
        arm_ids=tuple(a.arm_id for a in public.arms),
        weights=tuple(a.weight for a in public.arms),
        salt=public.salt,
        unit_id_storage=public.hash.unit_id_storage,
        valid_until=float(public.valid_until),
        min_arm_share=public.min_arm_share,
    )


class LocalState:
    """The held allocations, the exposure buffer and the metrics of one client.

    :meth:`decide` runs on the caller's thread and does no I/O once the experiment's
    allocation is held; everything else is called by the client's background worker.
    ``deque.append`` and ``popleft`` are atomic in CPython, so deciding threads and the
    worker share the buffer without a lock.

    A decision costs the rule plus a few hundred nanoseconds, so it keeps no counters:
    each exposure carries a sequence number, the buffer is a ``deque`` with ``maxlen``
    (a full one drops its oldest entry by itself), and the worker counts the decisions
    and the dropped exposures from the gaps in the numbers it takes out
    (:attr:`metrics`).
    """

    def __init__(
        self,
        settings: LocalSettings,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self.held: dict[str, Held] = {}
        self.buffer: deque[Pending] = deque(maxlen=settings.max_buffer)
        #: Called (by the deciding thread) when a full batch waits: wakes the worker.
        self.wake: Callable[[], None] = lambda: None
        #: Exposure ids: a random prefix per client (64 bits) and the sequence number;
        #: unique without a random draw per decision.
        self._prefix = os.urandom(8).hex() + "-"
        self._seq = itertools.count(1)
        #: The sequence number the worker expects at the buffer's front next.
        self._expected = 1
        self._flush_size = settings.flush_size
        self._metrics = LocalMetrics()
        self._metrics_dropped = 0
        #: Failed flushes in a row, and when the next may start (backing off).
        self._flush_failures = 0
        self._flush_retry_at = 0.0

    @property
    def metrics(self) -> LocalMetrics:
        """The counters, brought up to date (the decisions and the drops not yet seen by
        the worker are read off the buffer's ends)."""
        m = self._metrics
        buffer = self.buffer
        try:
            first, last = buffer[0][4], buffer[-1][4]
        except IndexError:
            m.decisions = max(m.decisions, self._expected - 1)
            m.dropped = self._metrics_dropped
            return m
        m.decisions = max(m.decisions, last)
        m.dropped = self._metrics_dropped + max(0, first - self._expected)
        return m

    # -- the caller's side -------------------------------------------------------------
    def decide(self, experiment_id: str, unit_id: str) -> LocalDecision | None:
        """The unit's decision under the allocation held, its exposure buffered;
        ``None`` when no allocation is held yet (the client fetches it)."""
        held = self.held.get(experiment_id)
        if held is None:
            return None
        decision = held.allocation.choose(unit_id)
        buffer = self.buffer
        buffer.append(
            (experiment_id, unit_id, decision[0], decision[4], next(self._seq), self.clock())
        )
        if len(buffer) == self._flush_size:
            # Only when the threshold is crossed (waking costs a lock): the worker then
            # takes batches while a full one waits.
            self.wake()
        return decision

    def flush_due(self) -> bool:
        """Whether a batch should go now: a full one waits, or the oldest waited long
        (not before the back-off after a failed flush ends)."""
        buffer = self.buffer
        if not buffer:
            return False
        now = self.clock()
        if now < self._flush_retry_at:
            return False
        if len(buffer) >= self._flush_size:
            return True
        return now - buffer[0][5] >= self.settings.flush_interval_s

    # -- the worker's side -------------------------------------------------------------
    def take_batch(self) -> list[Pending]:
        """Up to ``flush_size`` of the oldest exposures, removed from the buffer; a gap
        in their sequence numbers is exposures the full buffer dropped."""
        batch: list[Pending] = []
        buffer = self.buffer
        expected = self._expected
        for _ in range(min(self._flush_size, len(buffer))):
            item = buffer.popleft()
            if item[4] > expected:
                self._metrics_dropped += item[4] - expected
            expected = item[4] + 1
            batch.append(item)
        self._expected = max(self._expected, expected)
        return batch

    def exposure_id(self, seq: int) -> str:
        return f"{self._prefix}{seq}"

    def sent(self, accepted: int, duplicates: int) -> None:
        self._metrics.sent += accepted
        self._metrics.duplicates += duplicates
        self._flush_failures = 0
        self._flush_retry_at = 0.0
        self.reached()

    def _back_off(self, failures: int) -> float:
        """Seconds before the next try after ``failures`` failures in a row: the
        setting's base, doubling, at most 30 s."""
        return min(30.0, self.settings.retry_after_failure_s * 2.0 ** (failures - 1))

    def put_back(self, batch: Sequence[Pending], exc: Exception) -> None:
        """A batch that could not be sent (after the client's retries) returns to the
        buffer's front (it is older than everything there); what does not fit is
        dropped, oldest first. The client is stale until the server answers again."""
        self._metrics.flush_failures += 1
        self._flush_failures += 1
        self._flush_retry_at = self.clock() + self._back_off(self._flush_failures)
        self.unreachable(exc)
        self._restore(batch)

    def _restore(self, batch: Sequence[Pending]) -> None:
        """Return a batch taken out to the buffer's front (it is older than everything
        there); what does not fit is dropped, oldest first, and counted."""
        room = max(0, self.settings.max_buffer - len(self.buffer))
        keep = list(batch[len(batch) - room :]) if room < len(batch) else list(batch)
        self._metrics_dropped += len(batch) - len(keep)
        if keep:
            self._expected = keep[0][4]
            self.buffer.extendleft(reversed(keep))

    def flush_steps(
        self,
    ) -> Generator[list[ExposureCreate], tuple[int, int] | Exception, bool]:
        """One flush, without I/O: yields the items of a ``POST /exposures`` and is sent
        its outcome (``(accepted, duplicates)`` or the exception); returns ``False`` when
        the batch could not be sent (it is put back). Both clients drive it, the sync one
        with :func:`drive`; a driver must close it when it stops early.

        Between the yield and the outcome the batch exists only here. A driver that
        stops early (its task cancelled, its send raising something the client does not
        catch) closes the generator: the batch goes back to the buffer's front instead
        of vanishing uncounted. The server may already have logged it; sending it again
        is harmless, the exposure ids make ``POST /exposures`` idempotent (they come
        back as ``duplicates``)."""
        batch = self.take_batch()
        while batch:
            try:
                outcome = yield exposure_items(self, batch)
            except GeneratorExit:
                self._restore(batch)
                raise
            if isinstance(outcome, RequestValidationError):
                batch = self.refused(batch, outcome.errors)
            elif isinstance(outcome, Exception):
                self.put_back(batch, outcome)
                return False
            else:
                self.sent(*outcome)
                return True
        return True

    def refreshed(self, experiment_id: str, outcome: AllocationFetch | Exception) -> None:
        """Record a background refresh's outcome (see :meth:`fetched`,
        :meth:`refresh_failed`)."""
        if isinstance(outcome, Exception):
            self.refresh_failed(experiment_id, outcome)
        else:
            self.fetched(experiment_id, outcome.allocation, outcome.etag)

    def refused(self, batch: Sequence[Pending], errors: Sequence[Any]) -> list[Pending]:
        """After a 422: the items the server named are dropped (counted, logged once);
        the others are returned to be sent again. An answer naming no item drops the
        whole batch (retrying it would be refused again)."""
        bad = {e.get("index") for e in errors if isinstance(e, dict)}
        keep = [p for i, p in enumerate(batch) if i not in bad]
        if len(keep) == len(batch):
            keep = []
        self._metrics.rejected += len(batch) - len(keep)
        first = next((e for e in errors if isinstance(e, dict)), {})
        log.warning(
            "POST /exposures refused %d of %d exposures (first: %s)",
            len(batch) - len(keep),
            len(batch),
            first.get("msg", first),
        )
        return keep

    def refresh_due(self, now: float) -> list[str]:
        """The experiments whose allocation should be asked for again."""
        return [exp for exp, held in self.held.items() if held.refresh_at <= now]

    def next_wake(self, now: float) -> float:
        """Seconds the worker may sleep: until the next refresh or flush is due."""
        wake = self.settings.flush_interval_s
        for held in self.held.values():
            wake = min(wake, held.refresh_at - now)
        buffer = self.buffer
        if buffer:
            due = max(buffer[0][5] + self.settings.flush_interval_s, self._flush_retry_at)
            wake = min(wake, due - now)
        return max(0.01, wake)

    def fetched(
        self, experiment_id: str, public: AllocationPublic | None, etag: str | None
    ) -> Held:
        """Record an answer of the allocation endpoint (``None``: 304, the held copy
        is current) and schedule the next refresh after its version ends."""
        now = self.clock()
        held = self.held.get(experiment_id)
        if public is not None:
            held = Held(allocation_of(public), etag, 0.0)
            self.held[experiment_id] = held
        elif held is None:
            raise InvalidAllocationError(f"304 for {experiment_id!r} without a held allocation")
        held.failures = 0
        delay = self.settings.refresh_delay_s
        until = held.allocation.valid_until
        # A 304 after the version's end: the server has not moved on yet; ask again soon.
        start = until if until > now else now
        held.refresh_at = start + delay + self.rng.uniform(0, delay or 0.1)
        self.reached()
        return held

    def refresh_failed(self, experiment_id: str, exc: Exception) -> None:
        """Keep serving the held allocation, try again later (backing off)."""
        self._metrics.refresh_failures += 1
        held = self.held.get(experiment_id)
        if held is not None:
            held.failures += 1
            held.refresh_at = self.clock() + self._back_off(held.failures)
        self.unreachable(exc)

    def reached(self) -> None:
        m = self._metrics
        m.last_contact = self.clock()
        if m.stale:
            m.stale = False
            log.warning("decider reachable again: local decisions use fresh allocations")

    def unreachable(self, exc: Exception) -> None:
        """Mark the client stale; the warning is logged once per outage."""
        if not self._metrics.stale:
            self._metrics.stale = True
            log.warning(
                "decider unreachable (%s): local decisions keep using the last allocation "
                "held; exposures are buffered (up to %d)",
                exc,
                self.settings.max_buffer,
            )


def exposure_items(state: LocalState, batch: Sequence[Pending]) -> list[ExposureCreate]:
    """The request items of buffered exposures. Built without re-validation: the unit id
    passed the rule's check when decided, the other fields come from the server's
    allocation or from this module."""
    return [
        ExposureCreate.model_construct(
            experiment_id=exp,
            unit_id=unit,
            arm_id=arm,
            allocation_version=version,
            exposure_id=state.exposure_id(seq),
            ts=ts,
        )
        for exp, unit, arm, version, seq, ts in batch
    ]


def drive(
    steps: Generator[list[ExposureCreate], tuple[int, int] | Exception, bool],
    send: Callable[[list[ExposureCreate]], tuple[int, int] | Exception],
) -> bool:
    """Run :meth:`LocalState.flush_steps` with a blocking ``send`` (closing it on the
    way out, so that a batch whose send raised returns to the buffer)."""
    try:
        items = next(steps)
        while True:
            items = steps.send(send(items))
    except StopIteration as done:
        return bool(done.value)
    finally:
        steps.close()

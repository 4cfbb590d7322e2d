"""Off-policy evaluation for the decider: its response shape and the process it runs in.

The decider serves decisions, so ``GET /experiments/{id}/evaluate`` must not take their
CPU. Reading an experiment's partitions, replaying the fold and running the estimators
(:mod:`offpolicy`) is seconds of pure Python; in a thread of the serving process it
shares the GIL with the event loop, and decisions waited for it while it ran
(docs/off-policy-evaluation.md). So it runs in a separate process,
:class:`EvaluationWorker`:

* **one per decider process, started at the first evaluation** and kept for the next
  (its start-up, a fresh interpreter importing numpy and librdkafka, is paid once);
* **spawned, never forked**: the decider holds librdkafka's threads (and the server's),
  whose locks a forked child would inherit in whatever state they were;
* **nice'd** (:data:`NICENESS`) below the serving process, so on a busy machine the
  scheduler gives decisions the CPU first;
* **stopped with the decider**, and whenever a caller stops waiting for it (so no answer
  of an abandoned evaluation can reach the next one); it also exits by itself when the
  decider disappears (its end of the pipe closes).

The route (:mod:`services.decider.routes.evaluation`) keeps the other fences: one
evaluation at a time per process (:data:`evaluation_lock`, 429 otherwise), and bounded
work (``evaluate_max_decisions``, ``evaluate_max_records``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final, Literal, TypeVar

from mab_client.models import EvaluationPublic
from offpolicy.evaluate import EvaluationOptions, EvaluationReport, evaluate_log
from offpolicy.reader import LogTooLargeError, LogUnavailableError, read_experiment_log
from schemas.topics import TopicNames
from stream_runtime.kafka_connection import KafkaConnection

T = TypeVar("T")

#: Added to the evaluation process's niceness: decisions first when CPU is short.
NICENESS: Final = 10
#: A fresh interpreter (see the module docstring: never ``fork``).
START_METHOD: Final = "spawn"
#: How long a stopping worker gets before it is killed.
STOP_TIMEOUT_S: Final = 5.0

#: One evaluation at a time per process (checked, never waited on: a second request is
#: answered 429 instead of queueing behind the first).
evaluation_lock = asyncio.Lock()


class EvaluationProcessError(RuntimeError):
    """The worker process failed the call: it raised (the child's traceback is the
    message) or it stopped before answering (``stopped``)."""

    def __init__(self, detail: str, *, stopped: bool = False) -> None:
        super().__init__(detail)
        self.stopped = stopped


def _serve(conn: Connection) -> None:
    """The worker process: run each ``(function, args)`` received, send back
    ``("ok", result)`` or ``("error", traceback)``, until the pipe closes."""
    # Ctrl-C in a terminal reaches the whole process group: the decider stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICENESS)
    while True:
        try:
            function, args = conn.recv()
        except (EOFError, OSError):
            return  # the decider closed the pipe, or went away
        try:
            answer: tuple[str, Any] = ("ok", function(*args))
        except Exception:
            answer = ("error", traceback.format_exc())
        try:
            conn.send(answer)
        except OSError:
            return


class EvaluationWorker:
    """A single worker process, started on first use; :meth:`call` runs a function there.

    Calls must not overlap (the route's :data:`evaluation_lock` sees to it): the pipe
    carries one request and its answer at a time.
    """

    def __init__(self) -> None:
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The worker's pid while it runs (``None`` before the first call)."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def _start(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        self.close()
        context = multiprocessing.get_context(START_METHOD)
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_serve, args=(theirs,), name="mab-decider-evaluation", daemon=True
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        return ours

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the worker process (both must pickle; ``function`` by
        reference, so a module-level function). Raises :class:`EvaluationProcessError`
        when it raised there or the process stopped. A caller that stops waiting
        (cancelled) stops the process too: its answer must not reach the next call."""
        # Starting a process forks and execs: off the event loop, like the wait.
        conn = await asyncio.to_thread(self._start)
        try:
            conn.send((function, args))
            kind, value = await asyncio.to_thread(conn.recv)
        except (EOFError, OSError):
            self.close()
            raise EvaluationProcessError(
                "the evaluation process stopped before answering", stopped=True
            ) from None
        except BaseException:
            self.close()
            raise
        if kind != "ok":
            raise EvaluationProcessError(str(value))
        result: T = value
        return result

    def close(self) -> None:
        """Stop the worker (terminate, then kill after :data:`STOP_TIMEOUT_S`)."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is not None:
            process.terminate()
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        if conn is not None:
            conn.close()


# -- the evaluation itself, run in the worker ----------------------------------------------


@dataclass(frozen=True, slots=True)
class EvaluationJob:
    """Everything an evaluation needs, small enough to pickle into the worker."""

    kafka: KafkaConnection
    topics: TopicNames
    experiment_id: str
    strategy: str
    params: dict[str, Any]
    options: EvaluationOptions
    max_records: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class EvaluationOutcome:
    """A report, or why there is none (the reader's refusals, which the route maps to
    422 and 503; returned rather than raised because they do not pickle)."""

    report: EvaluationReport | None = None
    refused: Literal["too_large", "unavailable"] | None = None
    detail: str = ""


def run_evaluation(job: EvaluationJob) -> EvaluationOutcome:
    """Read the experiment's log and evaluate it (in the worker, with its own loop)."""
    try:
        log = asyncio.run(
            read_experiment_log(
                job.kafka,
                job.topics,
                job.experiment_id,
                max_records=job.max_records,
                timeout_s=job.timeout_s,
            )
        )
    except LogTooLargeError as exc:
        return EvaluationOutcome(refused="too_large", detail=str(exc))
    except LogUnavailableError as exc:
        return EvaluationOutcome(refused="unavailable", detail=str(exc))
    return EvaluationOutcome(report=evaluate_log(log, job.strategy, job.params, job.options))


# -- the response ---------------------------------------------------------------------------


def evaluation_public(
    r: EvaluationReport, max_decisions: int, elapsed_s: float
) -> EvaluationPublic:
    """The answer: the report's own fields and the estimates, each under its own name (the
    estimates and arms read from their dataclasses' attributes), with the weight summary
    as :meth:`~offpolicy.estimators.Estimates.to_dict` gives it (a non-finite weight is
    ``null``)."""
    res = r.result
    weights = res.to_dict()
    report_fields = {f.name: getattr(r, f.name) for f in fields(r) if f.name != "result"}
    return EvaluationPublic.model_validate(
        {
            **report_fields,
            "confidence": res.confidence,
            "estimates": res.estimates,
            "logged": res.logged,
            "ess": res.ess,
            "arms": res.arms,
            **{k: weights[k] for k in ("weight_mean", "weight_max", "max_weight_share")},
            "max_decisions": max_decisions,
            "elapsed_s": elapsed_s,
        },
        from_attributes=True,
    )

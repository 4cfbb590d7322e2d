"""Replay's worker processes: forked when that is safe, else spawned, and started before
the caller reads the topics' metadata (:func:`warm_pool`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.context import BaseContext


def _warm() -> None:
    """A worker's first task: it makes the pool start its processes at once (and a
    spawned one imports this module, with the decoder, the engine and the clients,
    while unpickling it) before any plan exists."""


def pool_context() -> BaseContext:
    """``fork`` when it is safe here, else ``spawn``.

    A forked worker starts in milliseconds with everything already imported; a spawned
    one is a fresh interpreter importing pydantic, the clients and the processors (~1.5
    s, two of them at once on two cores), and a forkserver imports the caller's main
    module as well: the first chunk came ~1 s later with either. Forking is unsafe while
    another thread may hold a lock the child needs (why Python 3.14 no longer forks by
    default), so it is used only on Linux, with no other Python thread and no librdkafka
    thread (``rdk:*``; the workers create Kafka clients of their own) in this process.
    The CLI forks before it starts any client; a test runner or an embedding program
    with threads gets ``spawn``. Native pools that handle ``fork`` themselves (OpenBLAS,
    jemalloc's background thread) do not count.
    """
    if sys.platform == "linux" and threading.active_count() == 1 and not _kafka_threads():
        return get_context("fork")
    return get_context("spawn")


def _reset_signals() -> None:
    """Give a worker Python's own SIGINT handler.

    A forked worker inherits the caller's handler, which under ``asyncio.run`` cancels
    the *caller's* main task: in the worker it would cancel a copy and Ctrl-C would not
    stop the worker. With the default handler, Ctrl-C raises ``KeyboardInterrupt`` in
    every worker, as it does in spawned ones.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _kafka_threads() -> bool:
    """Whether a librdkafka client of this process has threads running (Linux)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return True  # cannot tell: assume the worst
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
                if f.read().startswith("rdk:"):
                    return True
        except OSError:
            continue  # the thread ended meanwhile
    return False


@contextlib.contextmanager
def warm_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes started before the caller reads the topics' metadata.

    Forked (see :func:`pool_context`) before any client or thread exists, and spawned
    ones overlap their start-up with the metadata reads. ``None`` for a single worker
    (replay then runs in this process).
    """
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(
        workers, mp_context=pool_context(), initializer=_reset_signals
    ) as pool:
        for _ in range(workers):
            pool.submit(_warm)
        yield pool

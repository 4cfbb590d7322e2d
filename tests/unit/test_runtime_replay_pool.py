"""Replay's worker processes: forked when that is safe, spawned otherwise.

Each case runs in a fresh interpreter, because the answer depends on the threads of the
process that asks (the test runner's own threads would decide it here).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(sys.platform != "linux", reason="replay forks on Linux only"),
]


def run(script: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_single_threaded_process_forks_workers_that_share_its_memory() -> None:
    """The CLI's case: workers are forked, so they see what the parent had in memory
    (a spawned worker would not: it starts a fresh interpreter). They do not inherit
    the caller's SIGINT handler (``asyncio.run`` installs one that cancels the caller's
    task), so Ctrl-C stops them."""
    out = run(
        "import builtins, functools, os, signal\n"
        "from stream_runtime.replay_pool import pool_context, warm_pool\n"
        "print(pool_context().get_start_method())\n"
        "builtins._replay_marker = 'inherited'\n"
        "signal.signal(signal.SIGINT, lambda *_: None)\n"
        "with warm_pool(2) as pool:\n"
        "    assert pool is not None\n"
        "    pids = {pool.submit(os.getpid).result() for _ in range(8)}\n"
        "    probe = functools.partial(\n"
        '        eval, \'getattr(__import__("builtins"), "_replay_marker", "missing")\')\n'
        "    marks = {pool.submit(probe).result() for _ in range(4)}\n"
        "    handler = functools.partial(eval, '__import__(\"signal\").getsignal(2)'\n"
        "        ' is __import__(\"signal\").default_int_handler')\n"
        "    defaults = {pool.submit(handler).result() for _ in range(4)}\n"
        "print(bool(pids) and os.getpid() not in pids, *marks, *defaults)\n"
    )
    assert out == ["fork", "True", "inherited", "True"]


def test_another_python_thread_means_spawn() -> None:
    out = run(
        "import threading\n"
        "from stream_runtime.replay_pool import pool_context\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait)\n"
        "t.start()\n"
        "print(pool_context().get_start_method())\n"
        "stop.set(); t.join()\n"
        "print(pool_context().get_start_method())\n"
    )
    assert out == ["spawn", "fork"]


def test_a_live_librdkafka_client_means_spawn() -> None:
    """librdkafka's threads are native (``threading`` does not see them) and the forked
    workers create Kafka clients of their own, so a live client rules fork out. No
    broker is needed: the client starts its threads before it connects."""
    out = run(
        "from confluent_kafka import Producer\n"
        "from stream_runtime.replay_pool import pool_context\n"
        "p = Producer({'bootstrap.servers': '127.0.0.1:9', 'log_level': 0})\n"
        "print(pool_context().get_start_method())\n"
    )
    assert out == ["spawn"]

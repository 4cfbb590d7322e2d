"""Process supervision: a pid is signalled only while it still runs the argv we recorded
(deploy/stack/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.stack.errors import StackError
from deploy.stack.process import ManagedProcess, _cmdline_matches, log_tail, recorded_names

pytestmark = pytest.mark.unit

SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


def test_stop_never_kills_a_process_that_is_not_ours(tmp_path: Path) -> None:
    """Scenario: our pid file points at a pid that now runs another command (pid reuse).
    We expect stop() to leave that process alone and drop the stale pid file."""
    proc = ManagedProcess("svc", tmp_path)
    pid, _ = proc.spawn(SLEEP)
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        proc.pid_file.write_text(f"{stranger.pid}\n")
        assert proc.pid() is None
        assert not proc.stop(timeout=1)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_stop_terminates_our_process(tmp_path: Path) -> None:
    proc = ManagedProcess("svc", tmp_path)
    pid, _ = proc.spawn(SLEEP)
    assert proc.pid() == pid
    assert proc.stop(timeout=5)
    assert proc.pid() is None
    assert not proc.pid_file.exists()


def test_a_server_that_rewrote_its_title_is_known_by_executable_and_port() -> None:
    """redis-server shows ``redis-server 127.0.0.1:<port>`` instead of its argv."""
    argv = ["/usr/bin/redis-server", "/run/redis.conf", "--port", "6390"]
    assert _cmdline_matches(argv, argv, 6390)
    assert _cmdline_matches(["/usr/bin/redis-server 127.0.0.1:6390"], argv, 6390)
    assert _cmdline_matches(["redis-server 127.0.0.1:6390 [cluster]"], argv, 6390)
    assert not _cmdline_matches(["/usr/bin/redis-server 127.0.0.1:6391"], argv, 6390)
    assert not _cmdline_matches(["/usr/bin/sleep", "6390"], argv, 6390)
    assert not _cmdline_matches(["/usr/bin/redis-server 127.0.0.1:6390"], argv, None)
    assert not _cmdline_matches(None, argv, 6390)


def test_recorded_names_and_log_tails(tmp_path: Path) -> None:
    assert recorded_names(tmp_path) == []
    for name in ("svc.2", "svc", "kafka"):
        ManagedProcess(name, tmp_path).spawn([sys.executable, "-c", "print('started')"])
    assert recorded_names(tmp_path) == ["kafka", "svc", "svc.2"]
    proc = ManagedProcess("svc", tmp_path)
    assert log_tail(tmp_path / "missing.log") == "(no log file)"
    end = proc.log_file.stat().st_size
    assert log_tail(proc.log_file, start=end) == "(log is empty)"
    for name in recorded_names(tmp_path):
        ManagedProcess(name, tmp_path).stop(timeout=5)
    assert recorded_names(tmp_path) == []


def test_waiting_for_a_start_ends_on_ready_on_timeout_or_on_exit(tmp_path: Path) -> None:
    """Scenario: one process becomes ready, one never does, one exits at once.
    We expect True, False after the timeout, and one error carrying this start's log."""
    proc = ManagedProcess("svc", tmp_path)
    pid, offset = proc.spawn(SLEEP)
    try:
        assert proc.wait_ready(pid, offset, lambda: True, 5, what="svc", interval=0.05)
        assert not proc.wait_ready(pid, offset, lambda: False, 0.2, what="svc", interval=0.05)
    finally:
        proc.stop(timeout=5)
    crash = ManagedProcess("crash", tmp_path)
    first, _ = crash.spawn([sys.executable, "-c", "print('first run')"])
    os.waitpid(first, 0)  # its line is in the log before the next start's offset
    pid, offset = crash.spawn([sys.executable, "-c", "print('bad config'); raise SystemExit(3)"])
    with pytest.raises(StackError, match="crash exited during start-up") as info:
        crash.wait_ready(pid, offset, lambda: False, 10, what="crash", interval=0.05)
    assert "bad config" in str(info.value)
    assert "first run" not in str(info.value)  # only this start's lines

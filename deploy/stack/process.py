"""Process supervision: start a process detached, find it again, stop only what is ours.

Every process the stack starts gets a pid file, an argv record and a log file under one
run directory (``pids/<name>.pid``, ``pids/<name>.json``, ``logs/<name>.log``). We only
ever signal a pid whose ``/proc/<pid>/cmdline`` still matches the argv we recorded, so a
recycled pid never kills someone else's process, and a second ``mab up`` or ``mab
down`` (another shell, after a reboot) finds exactly what the first one started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.stack.config import REPO_ROOT
from deploy.stack.errors import StackError

#: Folders of a run directory: pid files and argv records, and the processes' logs.
PID_DIR = "pids"
LOG_DIR = "logs"


def log_tail(path: Path, lines: int = 40, start: int = 0) -> str:
    """Last lines of a log file (from byte ``start``), for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return "(no log file)"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def _proc_cmdline(pid: int) -> list[str] | None:
    """The argv of a live, non-zombie process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 3 of /proc/<pid>/stat (after the parenthesised comm) is the state; Z = zombie.
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    if state in ("Z", "X"):
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _cmdline_matches(cmdline: list[str] | None, argv: list[str], port: int | None) -> bool:
    """Is this live process still the one we started?

    Exact argv equality, or, for servers that rewrite their process title (redis-server shows
    ``/usr/bin/redis-server 127.0.0.1:6379``), the same executable plus our port in the title.
    """
    if cmdline is None or not argv:
        return False
    if cmdline == argv:
        return True
    tokens = " ".join(cmdline).split()
    if not tokens or Path(tokens[0]).name != Path(argv[0]).name or port is None:
        return False
    return any(t == str(port) or t.endswith(f":{port}") for t in tokens[1:])


def _reap(pid: int) -> None:
    """Collect the exit status if the pid is our own child (avoids zombies in tests)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def worker_children(pid: int) -> list[int]:
    """Live worker processes of a server supervisor, by pid.

    Workers are the children started through ``multiprocessing``'s spawn entry point
    (uvicorn ``--workers``) or forked with the supervisor's own command line (granian);
    anything else the supervisor may run (a resource tracker) is not a worker.
    """
    found: list[int] = []
    parent_cmdline = _proc_cmdline(pid)
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) < 2 or fields[1] != str(pid):
            continue
        child = int(stat_path.parent.name)
        cmdline = _proc_cmdline(child)
        if cmdline is not None and (
            any("spawn_main" in part for part in cmdline) or cmdline == parent_cmdline
        ):
            found.append(child)
    return sorted(found)


def recorded_names(run_dir: Path) -> list[str]:
    """Names of the processes with a pid file in ``run_dir``, sorted (running or not:
    :meth:`ManagedProcess.pid` tells)."""
    pid_dir = run_dir / PID_DIR
    if not pid_dir.is_dir():
        return []
    return sorted(p.stem for p in pid_dir.glob("*.pid"))


class ManagedProcess:
    """A process started by us and tracked through files in ``run_dir``.

    ``pids/<name>.pid`` holds the bare pid (shell friendly); ``pids/<name>.json`` records the argv
    and port so that :meth:`pid` can verify ``/proc/<pid>/cmdline`` before anyone signals it.
    """

    def __init__(self, name: str, run_dir: Path) -> None:
        self.name = name
        self.run_dir = run_dir
        self.pid_file = run_dir / PID_DIR / f"{name}.pid"
        self.meta_file = run_dir / PID_DIR / f"{name}.json"
        self.log_file = run_dir / LOG_DIR / f"{name}.log"

    def _meta(self) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads(self.meta_file.read_text())
            meta["pid"] = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return meta

    def pid(self) -> int | None:
        """Our live pid, or None (a stale pid file is removed)."""
        meta = self._meta()
        if meta is None:
            return None
        pid = int(meta["pid"])
        _reap(pid)
        if _cmdline_matches(_proc_cmdline(pid), list(meta.get("argv", [])), meta.get("port")):
            return pid
        self._forget()
        return None

    def recorded_argv(self) -> list[str] | None:
        meta = self._meta()
        return None if meta is None else [str(a) for a in meta.get("argv", [])]

    def recorded_port(self) -> int | None:
        meta = self._meta()
        port = None if meta is None else meta.get("port")
        return int(port) if port is not None else None

    def _forget(self) -> None:
        for path in (self.pid_file, self.meta_file):
            path.unlink(missing_ok=True)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
    ) -> tuple[int, int]:
        """Start ``argv`` detached (own session, survives the CLI) with output to the log file.

        Returns ``(pid, log_offset)``: readiness checks only read the log from that offset, so an
        earlier run's "started" line in an appended log never counts.
        """
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            offset = log.tell()
            log.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {self.name}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd or REPO_ROOT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        self.meta_file.write_text(json.dumps({"argv": list(argv), "port": port}))
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid, offset

    def alive(self, pid: int) -> bool:
        _reap(pid)
        return _proc_cmdline(pid) is not None

    def wait_ready(
        self,
        pid: int,
        offset: int,
        ready: Callable[[], bool],
        timeout: float,
        *,
        what: str,
        interval: float,
    ) -> bool:
        """Poll ``ready`` every ``interval`` until it holds (True) or ``timeout`` has
        passed (False). A process that exits meanwhile never will: that is a
        :class:`StackError` at once, with the log of this start (from ``offset``)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive(pid):
                raise StackError(
                    f"{what} exited during start-up; log {self.log_file}:\n"
                    + log_tail(self.log_file, start=offset)
                )
            if ready():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM our pid, SIGKILL after ``timeout``. Returns True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self._forget()
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive(pid):
            time.sleep(0.1)
        if self.alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self.alive(pid):
                time.sleep(0.05)
        self._forget()
        return True

"""What every benchmark of the service shares: a throwaway stack with a namespace,
services as processes, wrk runs and their medians, the machine's header.

:mod:`bench.run` (``make bench``) and the single-purpose benchmarks
(:mod:`bench.evaluation_latency`) build their rows from these, so every figure is
measured the same way: wrk ``-t1 -c32`` with :file:`bench/wrk/report.lua`, the decider
served as in production, medians of repeated runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import KafkaException

from deploy.stack.local import LocalStack, throwaway_stack
from deploy.stack.ports import free_port
from deploy.stack.topics import create_topics
from schemas.topics import TopicNames, topic_specs
from stream_runtime.kafka_connection import KafkaTarget
from stream_runtime.kafka_metadata import partition_count
from stream_runtime.replay import high_watermarks

ROOT = Path(__file__).resolve().parents[1]
REPORT_LUA = ROOT / "bench" / "wrk" / "report.lua"
#: report.lua plus unit ids, new and returning mixed (``-- UNITS <new share> <seed>``).
UNITS_LUA = ROOT / "bench" / "wrk" / "units.lua"
RESULTS = ROOT / "bench" / "results"
#: The decider's default server (``services/decider/__main__.py``); the ceilings and every
#: decider figure use it, and one uvicorn row shows what the choice is worth.
SERVER = "granian"


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), in MiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return round(total / 1024, 1)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far: on a shared
    machine a steadier figure than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """:func:`cpu_s` of a process and its descendants alive now (granian serves from a
    worker process, and that worker runs the evaluation worker): read before and after a
    run, the difference is what serving the run cost, whichever process did it."""
    total = cpu_s(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        try:
            total += tree_cpu_s(int(child))
        except FileNotFoundError:  # exited between the two reads
            continue
    return total


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Poll ``url`` until it answers 200. A service that exits first fails at once, one
    not ready within ``timeout`` s fails then; either way the error carries the tail of
    its ``log`` (named after the service), so the cause is in the failure itself. The
    benchmarks and the end-to-end tests start their services this same way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{log.stem} not ready at {url} after {timeout}s:\n{log_tail(log)}")


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


class Proc:
    """A service process with its log, stopped on exit."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_http(self, url: str, timeout: float = 30) -> None:
        wait_ready(url, self.popen, self.log, timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def server_argv(server: str, target: str, port: int, workers: int) -> list[str]:
    """The command line serving ``target`` with ``server`` (granian or uvicorn)."""
    if server == "granian":
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--loop",
            "uvloop",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
            target,
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]


@contextmanager
def http_server(
    name: str, target: str, env: dict[str, str], logdir: Path, workers: int = 1, server: str = ""
) -> Iterator[tuple[Proc, str]]:
    port = free_port()
    proc = Proc(name, server_argv(server or SERVER, target, port, workers), env, logdir)
    try:
        health = "/ready" if "decider" in target else "/decision"
        proc.wait_http(f"http://127.0.0.1:{port}{health}")
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def wrk(
    url: str,
    duration: int,
    connections: int = 32,
    method: list[str] | None = None,
    script: Path = REPORT_LUA,
) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    if method:
        argv += ["--", *method]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r"WRKJSON (\{.*\})", out)
    if match is None:
        raise RuntimeError(f"wrk printed no report:\n{out}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "errors": raw["status_errors"] + raw["socket_errors"],
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per metric over repeated runs (each run is also kept in the JSON)."""
    keys = ["rps", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_request"]
    med: dict[str, Any] = {
        k: round(statistics.median(r[k] for r in runs), 2) for k in keys if k in runs[0]
    }
    med["requests"] = sum(r["requests"] for r in runs)
    med["errors"] = sum(r["errors"] for r in runs)
    med["runs"] = runs
    return med


def topic_count(bootstrap: KafkaTarget, topic: str, attempts: int = 5) -> int:
    """Records in ``topic``: the sum of its partitions' end offsets (nothing is deleted).

    A fresh client may not know a partition yet right after a busy run (librdkafka's
    ``_UNKNOWN_PARTITION`` until its metadata arrives): asked again after a pause, up to
    ``attempts`` times, rather than losing the whole benchmark to it."""
    partitions = partition_count(bootstrap, topic)
    if not partitions:
        raise RuntimeError(f"topic {topic} has no partitions in the metadata")
    for attempt in range(attempts):
        try:
            return sum(high_watermarks(bootstrap, [(topic, p) for p in range(partitions)]).values())
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def stream_env(bootstrap: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The services' environment on one namespace of a Kafka + Redis."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        "MAB_TOPIC_PREFIX": prefix,
        "MAB_REDIS_PREFIX": prefix,
        "LOG_LEVEL": "WARNING",
        # No keys (open mode, the decider on 127.0.0.1): the figures measure the mode of
        # the original API's clients; a key check costs ~2 us (docs/security.md).
        "MAB_AUTH": "open",
        "MAB_ADMIN_KEY": "",
        "MAB_CLIENT_KEYS": "",
    }


def header(what: str) -> dict[str, Any]:
    """The first keys of a results file: when, on what (with the load average, since the
    machine may be shared) and how it was measured."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}",
        "wrk": what,
    }


@contextmanager
def bench_stack() -> Iterator[tuple[LocalStack, dict[str, str], TopicNames, Path]]:
    """A throwaway Kafka + Redis with the topics of a fresh namespace: the stack, the
    services' environment on it, its topic names and a folder for the services' logs."""
    with throwaway_stack() as stack:
        stack.start_redis()
        stack.start_kafka()
        prefix = f"bench{uuid.uuid4().hex[:6]}-"
        create_topics(stack.bootstrap, topic_specs(prefix))
        logdir = Path(stack.config.run_dir) / "bench-logs"
        logdir.mkdir(parents=True, exist_ok=True)
        env = stream_env(stack.bootstrap, stack.redis_url, prefix)
        yield stack, env, TopicNames.with_prefix(prefix), logdir

"""Pure-Python provisioning of the local stack: Kafka (KRaft, from Maven Central jars), Redis
and the product's services as plain processes.

Why not Docker: the target machines have no Docker engine, so ``mab up`` and the test
fixtures start real processes instead. Every process we start gets a pid file, an argv record
and a log file under one run directory; we only ever signal a pid whose ``/proc/<pid>/cmdline``
still matches the argv we recorded, so a recycled pid never kills someone else's process.

Two modes share all code:

* product (:meth:`StackConfig.product`): run dir ``.state/``, Kafka data ``.state/kafka`` and
  Redis AOF in ``.state/redis``, persistent across restarts; ports from ``MAB_*_PORT``.
* throwaway (:meth:`StackConfig.throwaway`): a temp dir, free ports, Redis without persistence;
  used by the pytest fixtures and torn down at session end.

Register new services in :data:`SERVICES` (one list, bottom of this module).

Scale-out on one machine (``mab up --consumers N --projectors N --decider-workers N``): a
service with ``scaling="processes"`` runs N copies of its argv in one consumer group
(instance 1 keeps the plain name, the others are ``<name>.2`` ... ``<name>.N``); one with
``scaling="workers"`` runs one server with ``--workers N`` (uvicorn's supervisor shares one
port). The wanted counts are kept in ``<run dir>/scale.json``, so a later ``mab up`` without
options restarts what is missing instead of scaling back to one.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    from stream_runtime.kafka_connection import KafkaTarget

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = REPO_ROOT / ".state"
CACHE_DIR = REPO_ROOT / ".cache"
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
LIBS_MARKER = ".complete"
KAFKA_READY_LINE = "Kafka Server started"

#: Installs Java 17+, Maven and redis-server (as root, or through sudo); prints the one
#: apt-get command to run when it can do neither.
SYSTEM_DEPS = REPO_ROOT / "deploy" / "install_system_deps.sh"
JAVA_FIX = f"install Java 17+ (and Maven, redis-server): bash {SYSTEM_DEPS} stack"
MVN_FIX = f"install Maven (and Java 17+, redis-server): bash {SYSTEM_DEPS} stack"

#: Where ``mab up`` keeps the secrets it generated (mode 0600, in the ignored state dir).
ADMIN_KEY_FILE = "admin_key"
ADMIN_KEY_ENV = "MAB_ADMIN_KEY"
#: The dashboard's key: it may only read (docs/security.md), so the process that renders
#: pages for a browser never holds the admin key.
READ_KEY_FILE = "read_key"
READ_KEYS_ENV = "MAB_READ_KEYS"
#: What the dashboard and the demo traffic send as their bearer token.
API_KEY_ENV = "MAB_API_KEY"
#: The decider's auth mode (``keys`` or ``open``).
AUTH_ENV = "MAB_AUTH"
REDIS_PASSWORD_FILE = "redis_password"  # noqa: S105 (a file name, not a value)
#: The password goes to redis-server in this file, never on its command line (``ps``).
REDIS_CONF_FILE = "redis.conf"

#: Which of the stack's keys a service is given: the decider gets the keys it checks
#: (``serve``), a client the one key it sends (``admin``, ``read``), a stream processor
#: none.
KeyUse = Literal["serve", "admin", "read", "none"]


@dataclass(frozen=True, slots=True)
class StackSecret:
    """A secret of a stack (admin key, read key, Redis password) and where it came from
    (``env``, ``stored``, ``generated``)."""

    value: str
    source: str
    path: Path | None = None


def read_secret(
    run_dir: Path, file_name: str, env_var: str | None, env: Mapping[str, str] | None = None
) -> StackSecret | None:
    """``env_var`` if set (and given), else the secret stored in ``run_dir``, else None (nothing is
    created: for commands that only use a stack another command started). A
    group/world-readable file left by hand is tightened back to 0600."""
    env = os.environ if env is None else env
    given = env.get(env_var, "").strip() if env_var else ""
    if given:
        return StackSecret(given, "env")
    path = run_dir / file_name
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not stored:
        raise StackError(f"{path} is empty: delete it to generate a new one")
    return StackSecret(stored, "stored", path)


def ensure_secret(
    run_dir: Path, file_name: str, env_var: str | None, env: Mapping[str, str] | None = None
) -> StackSecret:
    """:func:`read_secret`, or a new secret stored in ``run_dir``.

    The file is created with mode 0600 atomically (``O_EXCL``), so two concurrent
    ``mab up`` never end with different secrets.
    """
    found = read_secret(run_dir, file_name, env_var, env)
    if found is not None:
        return found
    path = run_dir / file_name
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # a concurrent mab up stored one first: use it
        return ensure_secret(run_dir, file_name, env_var, env)
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value + "\n")
    return StackSecret(value, "generated", path)


def ensure_admin_key(run_dir: Path, env: Mapping[str, str] | None = None) -> StackSecret:
    """``MAB_ADMIN_KEY`` if set; else the key stored in ``run_dir``; else a new one, stored."""
    return ensure_secret(run_dir, ADMIN_KEY_FILE, ADMIN_KEY_ENV, env)


def ensure_redis_password(run_dir: Path, env: Mapping[str, str] | None = None) -> StackSecret:
    """``REDIS_PASSWORD`` if set; else the password stored in ``run_dir``; else a new one,
    stored. The same variable is the one clients read (:mod:`stream_runtime.redis_client`),
    so a stack started with it and a client given it agree."""
    return ensure_secret(run_dir, REDIS_PASSWORD_FILE, _password_env(), env)


def _password_env() -> str:
    from stream_runtime.redis_client import PASSWORD_ENV  # lazy: keeps `mab --help` fast

    return PASSWORD_ENV


def local_redis_url(port: int, password: str | None) -> str:
    """The URL of a stack's Redis on 127.0.0.1, with its password percent-encoded. It is
    handed to services and clients, never printed (``redact`` it for messages)."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def default_redis_url(
    env: Mapping[str, str] | None = None, run_dir: Path | None = None
) -> str | None:
    """For a command run without ``REDIS_URL``: the local stack's Redis (``mab up``,
    ``MAB_REDIS_PORT``) with its password, or None when ``REDIS_URL`` is set or no
    password was ever stored (then the settings' own default applies)."""
    env = os.environ if env is None else env
    if env.get("REDIS_URL"):
        return None
    port = Ports.from_env(env).redis
    secret = read_secret(run_dir or STATE_DIR, REDIS_PASSWORD_FILE, _password_env(), env)
    return None if secret is None else local_redis_url(port, secret.value)


def redis_conf_quote(value: str) -> str:
    """``value`` as a double-quoted redis.conf argument (Redis' own escapes), so any
    password, spaces and quotes included, reaches ``requirepass`` unchanged."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (a temp file in the
    same folder, renamed over it), so no other user ever reads a secret in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def redis_auth_config(password: str) -> str:
    """The redis.conf lines that make ``redis-server`` require ``password``. Replicas
    and cluster peers authenticate to each other with the same one (``masterauth``)."""
    quoted = redis_conf_quote(password)
    return (
        "# Written by deploy/local_stack.py on every start; mode 0600: it holds the password,\n"
        "# which must not show on redis-server's command line.\n"
        f"requirepass {quoted}\nmasterauth {quoted}\n"
    )


class StackError(RuntimeError):
    """One clear, user-facing failure of the local stack (the CLI prints it and exits 1)."""


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------

PORT_ENV: Mapping[str, str] = {
    "kafka": "MAB_KAFKA_PORT",
    "controller": "MAB_KAFKA_CONTROLLER_PORT",
    "redis": "MAB_REDIS_PORT",
    "api": "MAB_API_PORT",
    "dashboard": "MAB_DASHBOARD_PORT",
}


@dataclass(frozen=True, slots=True)
class Ports:
    """TCP ports of the stack, all bound on 127.0.0.1."""

    kafka: int = 9092
    controller: int = 9093
    redis: int = 6379
    api: int = 8000
    dashboard: int = 8501

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ports:
        """Defaults overridden by ``MAB_KAFKA_PORT`` etc.; the controller follows Kafka + 1."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for key, var in PORT_ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{var}={raw!r} is not a TCP port number")
            values[key] = int(raw)
        if "kafka" in values and "controller" not in values:
            values["controller"] = values["kafka"] + 1
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports the OS reports free right now (throwaway stacks, parallel sessions)."""
        socks: list[socket.socket] = []
        try:
            for _ in range(5):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            kafka, controller, redis_port, api, dashboard = (s.getsockname()[1] for s in socks)
        finally:
            for s in socks:
                s.close()
        return cls(kafka, controller, redis_port, api, dashboard)


def free_port() -> int:
    """One port the OS reports free right now (a test server, a benchmark baseline)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when someone listens on or holds ``host:port``.

    A bind test catches sockets that are bound but not (yet) listening; SO_REUSEADDR keeps
    TIME_WAIT leftovers of our own previous run from counting as "in use".
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return True
        raise
    finally:
        probe.close()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.settimeout(0.3)
        return conn.connect_ex((host, port)) == 0


def require_port_free(port: int, env_var: str) -> None:
    """Fail fast with the fix instead of letting a server crash-loop or a client hang."""
    if port_in_use(port):
        raise StackError(f"port {port} is in use by another process; stop it or set {env_var}")


def wait_port_open(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Poll until ``host:port`` accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.5)
            if conn.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Managed processes: pid file + argv record + log file
# --------------------------------------------------------------------------------------------


class ManagedProcess:
    """A process started by us and tracked through files in ``run_dir``.

    ``pids/<name>.pid`` holds the bare pid (shell friendly); ``pids/<name>.json`` records the argv
    and port so that :meth:`pid` can verify ``/proc/<pid>/cmdline`` before anyone signals it.
    """

    def __init__(self, name: str, run_dir: Path) -> None:
        self.name = name
        self.run_dir = run_dir
        self.pid_file = run_dir / "pids" / f"{name}.pid"
        self.meta_file = run_dir / "pids" / f"{name}.json"
        self.log_file = run_dir / "logs" / f"{name}.log"

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


# --------------------------------------------------------------------------------------------
# Kafka jars from Maven Central
# --------------------------------------------------------------------------------------------


def kafka_version(pom: Path = KAFKA_POM) -> str:
    """The Kafka version pinned in the pom (``<kafka.version>``)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if match is None:
        raise StackError(f"{pom} has no <kafka.version> property")
    return match.group(1)


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(f"`java` not found on PATH; {JAVA_FIX}")
    return java


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def _libs_complete(libs: Path, pom: Path) -> bool:
    """Complete = marker written by us for this exact pom, and every jar it lists present."""
    marker = libs / LIBS_MARKER
    if not marker.is_file():
        return False
    lines = [n for n in marker.read_text().splitlines() if n]
    if not lines or lines[0] != f"pom-sha256 {_pom_digest(pom)}":
        return False
    names = lines[1:]
    return bool(names) and all((libs / n).is_file() for n in names)


def ensure_kafka_jars(pom: Path = KAFKA_POM, cache_dir: Path = CACHE_DIR) -> Path:
    """Resolve the Kafka broker jars into ``.cache/kafka-libs-<version>`` once.

    Runs Maven only when the folder lacks the completion marker (or a jar it lists), into a
    temp folder renamed at the end, under a file lock, so an interrupted or concurrent run never
    leaves a half folder that looks complete. Later starts need no network.
    """
    require_java()
    libs = cache_dir / f"kafka-libs-{kafka_version(pom)}"
    if _libs_complete(libs, pom):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(f"`mvn` not found on PATH (needed once to fetch Kafka jars); {MVN_FIX}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".kafka-libs.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _libs_complete(libs, pom):
            return libs
        partial = Path(tempfile.mkdtemp(prefix=f"{libs.name}.", dir=cache_dir))
        try:
            proc = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={partial}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            jars = sorted(p.name for p in partial.glob("*.jar"))
            if proc.returncode != 0 or not jars:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
                raise StackError(
                    f"Maven could not resolve the Kafka jars (exit {proc.returncode}):\n{tail}"
                )
            (partial / LIBS_MARKER).write_text(
                "\n".join([f"pom-sha256 {_pom_digest(pom)}", *jars]) + "\n"
            )
            if libs.exists():
                shutil.rmtree(libs)
            partial.rename(libs)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return libs


# --------------------------------------------------------------------------------------------
# Redis binary
# --------------------------------------------------------------------------------------------


def _apt_install(packages: Sequence[str]) -> None:
    """``apt-get install -y``; on failure ``apt-get update`` once and retry.

    A temporary policy-rc.d stops Debian from auto-starting the packaged service on its default
    port, which would otherwise squat the port ``mab up`` wants.
    """
    if shutil.which("apt-get") is None:
        raise StackError(f"apt-get not available; install {' '.join(packages)} by hand")
    if os.geteuid() != 0:
        raise StackError(
            f"{' '.join(packages)} missing; run: sudo apt-get install -y {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=False)
            if subprocess.run(cmd, env=env, check=False).returncode != 0:
                raise StackError(f"apt-get install {' '.join(packages)} failed")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)


def ensure_redis_server() -> str:
    """Path of ``redis-server``, installing Debian's package when missing."""
    found = shutil.which("redis-server")
    if found is None:
        _apt_install(["redis-server"])
        found = shutil.which("redis-server")
    if found is None:
        raise StackError("redis-server still not on PATH after apt-get install redis-server")
    return found


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------


class TopicSpecLike(Protocol):
    """What :func:`schemas.topics.topic_specs` returns (structural, so tests can pass their own)."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> int: ...
    @property
    def config(self) -> dict[str, str]: ...


def product_topic_specs(prefix: str = "") -> list[TopicSpecLike]:
    """The product's topics from ``schemas.topics`` (the single source of names and settings)."""
    try:
        from schemas.topics import topic_specs
    except ModuleNotFoundError as exc:
        raise StackError(f"schemas.topics is not available ({exc})") from exc
    return list(topic_specs(prefix))


def create_topics(
    kafka: KafkaTarget, specs: Sequence[TopicSpecLike], timeout: float = 30.0
) -> dict[str, int]:
    """Create missing topics (replication 1) and return ``{name: partition count}``.

    ``kafka`` is bare servers (a PLAINTEXT broker, like the local stack's) or a whole
    :class:`~stream_runtime.kafka_connection.KafkaConnection` (TLS, SASL), so ``mab topics
    create`` provisions a managed cluster too. A broker that refuses the connection
    settings is a :class:`StackError` naming the variable to fix.

    Idempotent: existing topics are left alone (never re-partitioned: that would move
    experiments between partitions and break per-experiment order), and "already exists" from
    a concurrent creator is not an error. Waits until the metadata shows every topic with its
    partitions, so a producer right after this call does not race the controller.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from stream_runtime.kafka_connection import (
        KafkaConnectionError,
        new_client,
        wait_until_reachable,
    )

    try:
        admin, errors = new_client(AdminClient, kafka)
        existing = wait_until_reachable(admin, errors, timeout).topics
    except KafkaConnectionError as exc:
        raise StackError(str(exc)) from None
    missing = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=dict(s.config))
        for s in specs
        if s.name not in existing
    ]
    if missing:
        failures = []
        for name, future in admin.create_topics(missing, request_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                err = exc.args[0]
                raced = (
                    isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                )
                if not raced:
                    failures.append(f"{name}: {err}")
        if failures:
            raise StackError("topic creation failed: " + "; ".join(failures))
    names = [s.name for s in specs]
    deadline = time.monotonic() + timeout
    while True:
        listed = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        counts = {
            n: len(listed[n].partitions)
            for n in names
            if n in listed and listed[n].error is None and listed[n].partitions
        }
        if len(counts) == len(names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    missing_names = [n for n in names if n not in counts]
    if missing_names:
        raise StackError(f"topics not visible in metadata after {timeout}s: {missing_names}")
    return counts


def kafka_metadata_ok(kafka: KafkaTarget, timeout: float = 3.0) -> bool:
    """True when the broker answers a metadata request (the real readiness signal)."""
    from confluent_kafka.admin import AdminClient

    from stream_runtime.kafka_connection import (
        KafkaConnectionError,
        new_client,
        wait_until_reachable,
    )

    try:
        admin, errors = new_client(AdminClient, kafka)
        wait_until_reachable(admin, errors, timeout)
    except KafkaConnectionError:
        return False
    return True


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    import redis  # lazy: keeps `mab --help` fast

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import httpx  # lazy: keeps `mab --help` fast

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


#: How a service runs N instances on one machine: not at all, as N processes of one
#: consumer group, or as one server supervising N workers on one port.
Scaling = Literal["single", "processes", "workers"]

#: Most instances of one service ``mab up`` starts (a typo like 100 should not fork-bomb).
MAX_INSTANCES: Final = 32
SCALE_FILE: Final = "scale.json"


def instance_name(service: str, index: int) -> str:
    """``reward-consumer`` for instance 1, ``reward-consumer.2`` for instance 2, ..."""
    return service if index == 1 else f"{service}.{index}"


def parse_scale(name: str, raw: str | int) -> int:
    """A wanted instance count, or a :class:`StackError` naming where it came from."""
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_INSTANCES:
        raise StackError(f"{name}={raw!r}: want a whole number from 1 to {MAX_INSTANCES}")
    return int(text)


def load_scale(run_dir: Path) -> dict[str, int]:
    """The instance counts the last ``mab up`` was asked for (empty when none)."""
    try:
        raw = json.loads((run_dir / SCALE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): parse_scale(str(k), v) for k, v in raw.items()}


def save_scale(run_dir: Path, scale: Mapping[str, int]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SCALE_FILE).write_text(json.dumps(dict(sorted(scale.items()))) + "\n")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A product process ``mab up`` can start.

    ``module`` is checked with ``importlib.util.find_spec``: a service whose code does not exist
    yet is skipped with a note, so the registry can list services before they are written.
    ``argv`` and ``port`` are functions of the stack's ports (ports come from env at run time).
    ``health_path``: HTTP GET on ``http://127.0.0.1:<port><path>`` must answer 200; without it
    the service counts as healthy once it has stayed alive for ``alive_seconds``.
    ``scaling`` says how ``mab up`` runs N of it (see the module docstring).
    """

    name: str
    module: str
    argv: Callable[[Ports], list[str]]
    port: Callable[[Ports], int] | None = None
    port_env: str | None = None
    health_path: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    alive_seconds: float = 2.0
    start_timeout: float = 30.0
    #: Env var of a Prometheus exporter port: each start gets a free one, shown in status.
    metrics_port_env: str | None = None
    scaling: Scaling = "single"
    keys: KeyUse = "none"
    #: The topics its consumer group subscribes to, as ``schemas.topics.TopicNames``
    #: fields: members beyond their partition count get no partition (idle).
    consumes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scaling == "processes" and self.port is not None:
            raise ValueError(f"{self.name}: N processes cannot share one port; use workers")

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ModuleNotFoundError, ValueError):
            return False

    def health_url(self, ports: Ports) -> str | None:
        if self.port is None or self.health_path is None:
            return None
        return f"http://127.0.0.1:{self.port(ports)}{self.health_path}"

    def url(self, ports: Ports) -> str | None:
        return None if self.port is None else f"http://127.0.0.1:{self.port(ports)}"


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KafkaExtras:
    """What a broker needs beyond the plain one: more listeners (security protocol ->
    port, the listener named after its protocol), broker properties (appended, so they
    win), and arguments of the storage format (e.g. ``--add-scram`` users, which KRaft
    takes at format time).

    The PLAINTEXT listener always stays: inter-broker traffic and the stack's own
    readiness checks use it. Tests start a SASL_SSL broker this way.
    """

    listeners: Mapping[str, int] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)
    format_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Where a stack keeps its files, which ports it uses and whether data must persist."""

    run_dir: Path
    ports: Ports
    persistent: bool
    topic_prefix: str = ""
    #: A maximum, not a reservation. 512m ran out (OutOfMemoryError in the metadata
    #: loader) on a long-lived development broker holding ~14,000 partitions of test
    #: topics: every test namespace creates its own topics.
    kafka_heap: str = "1g"
    #: Listeners, properties and format-time arguments on top of the plain broker.
    kafka_extras: KafkaExtras = field(default_factory=KafkaExtras)

    @property
    def kafka_dir(self) -> Path:
        return self.run_dir / "kafka"

    @property
    def redis_dir(self) -> Path:
        return self.run_dir / "redis"

    @classmethod
    def product(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        return cls(
            run_dir=STATE_DIR,
            ports=Ports.from_env(env),
            persistent=True,
            topic_prefix=env.get("MAB_TOPIC_PREFIX", ""),
        )

    @classmethod
    def throwaway(cls, base: Path | None = None) -> StackConfig:
        run_dir = Path(tempfile.mkdtemp(prefix="mab-stack-", dir=base))
        return cls(run_dir=run_dir, ports=Ports.free(), persistent=False)


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """One row of ``mab status``."""

    name: str
    pid: int | None
    port: int | None
    running: bool
    healthy: bool
    url: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "port": self.port,
            "running": self.running,
            "healthy": self.healthy,
            "url": self.url,
            "note": self.note,
        }


def new_cluster_id() -> str:
    """A Kafka-style cluster id: URL-safe base64 of a random UUID, never starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def kafka_server_properties(
    data_dir: Path, port: int, controller_port: int, extras: KafkaExtras | None = None
) -> str:
    """Single-node KRaft broker+controller on 127.0.0.1 (see GUIDE §3 for each essential)."""
    extras = extras or KafkaExtras()
    listeners = {"PLAINTEXT": port, **extras.listeners}
    bound = ",".join(f"{name}://127.0.0.1:{p}" for name, p in listeners.items())
    protocols = ",".join(f"{name}:{name}" for name in listeners)
    return "\n".join(
        [
            "# Written by deploy/local_stack.py on every start; edit there, not here.",
            "process.roles=broker,controller",
            "node.id=1",
            f"listeners={bound},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners={bound}",
            f"listener.security.protocol.map={protocols},CONTROLLER:PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"log.dirs={data_dir / 'logs'}",
            "num.partitions=4",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "group.initial.rebalance.delay.ms=0",
            *(f"{key}={value}" for key, value in extras.properties.items()),
            "",
        ]
    )


class LocalStack:
    """Starts, checks and stops Kafka, Redis and registered services of one :class:`StackConfig`.

    Every method is idempotent: ``start_*`` returns at once when our process already runs,
    ``stop`` only signals pids we recorded and that still run our argv.
    """

    def __init__(
        self,
        config: StackConfig,
        services: Sequence[ServiceSpec] | None = None,
        scale: Mapping[str, int] | None = None,
        open_auth: bool = False,
    ) -> None:
        """``scale`` maps a scalable service's name to its wanted instance count; names not
        given keep the count of the last ``up`` (``scale.json``), else 1. ``open_auth``
        runs the decider with ``MAB_AUTH=open`` (admin calls without a key, loopback)."""
        self.config = config
        self.services: list[ServiceSpec] = list(SERVICES if services is None else services)
        self.kafka = ManagedProcess("kafka", config.run_dir)
        self.redis = ManagedProcess("redis", config.run_dir)
        self.open_auth = open_auth
        self._admin_key: StackSecret | None = None
        self._read_key: StackSecret | None = None
        self._redis_password: StackSecret | None = None
        scalable = {s.name for s in self.services if s.scaling != "single"}
        wanted = dict(scale or {})
        unknown = sorted(set(wanted) - scalable)
        if unknown:
            raise StackError(f"cannot scale {unknown}; scalable services: {sorted(scalable)}")
        for name, n in wanted.items():
            parse_scale(name, n)
        kept = {k: v for k, v in load_scale(config.run_dir).items() if k in scalable}
        self.scale: dict[str, int] = {**kept, **wanted}

    # -- instances ------------------------------------------------------------------------
    def count(self, spec: ServiceSpec) -> int:
        """How many instances of ``spec`` should run."""
        return 1 if spec.scaling == "single" else self.scale.get(spec.name, 1)

    def service_argv(self, spec: ServiceSpec) -> list[str]:
        argv = spec.argv(self.config.ports)
        if spec.scaling == "workers" and self.count(spec) > 1:
            argv += ["--workers", str(self.count(spec))]
        if spec.keys == "serve" and self.open_auth:
            # On the command line, not only in the env: a later `mab up` in the other
            # mode then sees a different argv and restarts the decider.
            argv += ["--auth", "open"]
        return argv

    def running_instances(self, spec: ServiceSpec) -> list[int]:
        """Indices of the instances of ``spec`` that have a pid file (1 = the plain name)."""
        pid_dir = self.config.run_dir / "pids"
        found: set[int] = set()
        if (pid_dir / f"{spec.name}.pid").exists():
            found.add(1)
        prefix = f"{spec.name}."
        for path in pid_dir.glob(f"{spec.name}.*.pid"):
            suffix = path.stem[len(prefix) :]
            if suffix.isdigit() and int(suffix) > 1:
                found.add(int(suffix))
        return sorted(found)

    def expected(self, with_services: bool = True) -> list[str]:
        """Component rows that must be healthy after ``up(with_services=...)``."""
        names = ["redis", "kafka"]
        if not with_services:
            return names
        for spec in self.services:
            if not spec.available():
                continue
            n = self.count(spec)
            if spec.scaling == "processes":
                names += [instance_name(spec.name, i) for i in range(1, n + 1)]
            else:
                names.append(spec.name)
                if spec.scaling == "workers" and n > 1:
                    names += [f"{spec.name}.w{i}" for i in range(1, n + 1)]
        return names

    def admin_key(self) -> StackSecret:
        """The decider's admin key, also given to the demo traffic (see
        :func:`ensure_admin_key`)."""
        if self._admin_key is None:
            self._admin_key = ensure_admin_key(self.config.run_dir)
        return self._admin_key

    def read_key(self) -> StackSecret:
        """The dashboard's read-only key, stored next to the admin key (never from the
        environment: ``MAB_READ_KEYS`` may list several)."""
        if self._read_key is None:
            self._read_key = ensure_secret(self.config.run_dir, READ_KEY_FILE, None)
        return self._read_key

    def redis_password(self) -> StackSecret:
        """The password of this stack's Redis (see :func:`ensure_redis_password`)."""
        if self._redis_password is None:
            self._redis_password = ensure_redis_password(self.config.run_dir)
        return self._redis_password

    # -- endpoints ------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.config.ports.kafka}"

    @property
    def redis_url(self) -> str:
        """With the password: what services and clients get, never what is printed."""
        return local_redis_url(self.config.ports.redis, self.redis_password().value)

    def service_env(self, keys: KeyUse = "none") -> dict[str, str]:
        """Environment a service gets: the stack's endpoints on top of ours, and only the
        keys it needs (``keys``); keys in our own environment reach no one else."""
        inherited = {
            k: v
            for k, v in os.environ.items()
            if k not in (ADMIN_KEY_ENV, READ_KEYS_ENV, API_KEY_ENV, AUTH_ENV)
        }
        return {
            **inherited,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "MAB_TOPIC_PREFIX": self.config.topic_prefix,
            "MAB_API_URL": f"http://127.0.0.1:{self.config.ports.api}",
            "PYTHONUNBUFFERED": "1",
            **self._keys_env(keys),
        }

    def _keys_env(self, keys: KeyUse) -> dict[str, str]:
        if keys == "serve":
            if self.open_auth:
                return {AUTH_ENV: "open", READ_KEYS_ENV: self.read_key().value}
            return {
                AUTH_ENV: "keys",
                ADMIN_KEY_ENV: self.admin_key().value,
                READ_KEYS_ENV: self.read_key().value,
            }
        if keys == "admin" and not self.open_auth:
            return {API_KEY_ENV: self.admin_key().value}
        if keys == "read":
            return {API_KEY_ENV: self.read_key().value}
        return {}

    def _managed(self, name: str) -> ManagedProcess:
        if name == "kafka":
            return self.kafka
        if name == "redis":
            return self.redis
        return ManagedProcess(name, self.config.run_dir)

    # -- Kafka ----------------------------------------------------------------------------
    def start_kafka(self, timeout: float = 90.0) -> int:
        """Start the broker (formatting storage on first use) and wait until it serves metadata.

        The cluster id is persisted next to the data, so a restart on the same data dir reuses
        the formatted log and every record written before.
        """
        pid = self.kafka.pid()
        if pid is not None:
            return pid
        ports = self.config.ports
        require_port_free(ports.kafka, PORT_ENV["kafka"])
        require_port_free(ports.controller, PORT_ENV["controller"])
        extras = self.config.kafka_extras
        for name, port in extras.listeners.items():
            require_port_free(port, f"the {name} listener's port")
        java = require_java()
        libs = ensure_kafka_jars()
        data = self.config.kafka_dir
        data.mkdir(parents=True, exist_ok=True)
        props = data / "server.properties"
        props.write_text(kafka_server_properties(data, ports.kafka, ports.controller, extras))
        classpath = f"{libs}/*"
        if not (data / "logs" / "meta.properties").exists():
            id_file = data / "cluster.id"
            if not id_file.exists():
                id_file.write_text(new_cluster_id() + "\n")
            fmt = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    id_file.read_text().strip(),
                    "-c",
                    str(props),
                    "--standalone",
                    *extras.format_args,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                tail = "\n".join((fmt.stdout + fmt.stderr).splitlines()[-20:])
                raise StackError(f"kafka StorageTool format failed:\n{tail}")
        argv = [
            java,
            f"-Xmx{self.config.kafka_heap}",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
            # Throwaway brokers live for seconds: the C1 JIT alone starts them faster.
            *([] if self.config.persistent else ["-XX:TieredStopAtLevel=1"]),
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
        pid, offset = self.kafka.spawn(argv, port=ports.kafka)
        self._wait_kafka(pid, offset, timeout)
        return pid

    def _wait_kafka(self, pid: int, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.kafka.alive(pid):
                raise StackError(
                    f"Kafka exited during start-up; log {self.kafka.log_file}:\n"
                    + log_tail(self.kafka.log_file, start=offset)
                )
            with contextlib.suppress(FileNotFoundError), self.kafka.log_file.open("rb") as fh:
                fh.seek(offset)
                started = KAFKA_READY_LINE.encode() in fh.read()
            # The log line is the fast path; a metadata answer alone also counts, so a broker
            # whose logging is misconfigured still comes up.
            if (started or wait_port_open(self.config.ports.kafka, 0.2)) and kafka_metadata_ok(
                self.bootstrap, timeout=5.0
            ):
                return
            time.sleep(0.25)
        self.kafka.stop(timeout=10)
        raise StackError(
            f"Kafka not ready after {timeout:.0f}s; log {self.kafka.log_file}:\n"
            + log_tail(self.kafka.log_file, start=offset)
        )

    # -- Redis ----------------------------------------------------------------------------
    def start_redis(self, timeout: float = 20.0) -> int:
        """Start redis-server: AOF on for the product, no persistence for throwaway stacks.

        A running one that answers without a password was started by a ``mab up`` from
        before passwords: the services would be refused by it, so say how to restart it
        (its AOF data is kept) instead of reporting it healthy."""
        pid = self.redis.pid()
        if pid is not None:
            port = self.redis.recorded_port() or self.config.ports.redis
            if redis_ping(local_redis_url(port, None)):
                raise StackError(
                    f"redis-server (pid {pid}) runs without a password; restart it with "
                    "one (data is kept): mab down && mab up"
                )
            return pid
        port = self.config.ports.redis
        require_port_free(port, PORT_ENV["redis"])
        binary = ensure_redis_server()
        data = self.config.redis_dir
        data.mkdir(parents=True, exist_ok=True)
        conf = self.config.run_dir / REDIS_CONF_FILE
        write_private(conf, redis_auth_config(self.redis_password().value))
        argv = [
            binary,
            str(conf),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--dir",
            str(data),
        ]
        persistence = ["--appendonly", "yes"]
        if not self.config.persistent:
            persistence = ["--save", "", "--appendonly", "no"]
        argv += persistence
        pid, offset = self.redis.spawn(argv, port=port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.redis.alive(pid):
                raise StackError(
                    f"redis-server exited during start-up; log {self.redis.log_file}:\n"
                    + log_tail(self.redis.log_file, start=offset)
                )
            if redis_ping(self.redis_url, timeout=0.5):
                return pid
            time.sleep(0.1)
        self.redis.stop(timeout=5)
        raise StackError(
            f"redis-server did not answer PING within {timeout:.0f}s; log:\n"
            + log_tail(self.redis.log_file, start=offset)
        )

    # -- topics ---------------------------------------------------------------------------
    def create_topics(self, specs: Sequence[TopicSpecLike] | None = None) -> dict[str, int]:
        """The product's topics (with the stack's prefix) unless ``specs`` are given."""
        chosen = product_topic_specs(self.config.topic_prefix) if specs is None else specs
        return create_topics(self.bootstrap, chosen)

    # -- services -------------------------------------------------------------------------
    def start_service(self, spec: ServiceSpec, index: int = 1) -> int:
        """Start one instance of a service and wait for its health check (HTTP 200, or
        alive for a while). A running instance started with other arguments (another
        worker count) is restarted with the wanted ones."""
        proc = self._managed(instance_name(spec.name, index))
        argv = self.service_argv(spec)
        pid = proc.pid()
        if pid is not None:
            if proc.recorded_argv() == argv:
                return pid
            proc.stop(timeout=20)
        port = spec.port(self.config.ports) if spec.port is not None else None
        if port is not None:
            require_port_free(port, spec.port_env or f"the port of {spec.name}")
        env = {**self.service_env(spec.keys), **spec.env}
        if spec.metrics_port_env is not None:
            # A free port per start, recorded with the pid so `mab status` can show it.
            port = free_port()
            env[spec.metrics_port_env] = str(port)
        pid, offset = proc.spawn(argv, env=env, port=port)
        url = spec.health_url(self.config.ports)
        if spec.metrics_port_env is not None:
            # Healthy = its exporter answers: the same check `mab status` makes.
            url = f"http://127.0.0.1:{port}/metrics"
        started = time.monotonic()
        deadline = started + (spec.start_timeout if url else spec.alive_seconds)
        while True:
            if not proc.alive(pid):
                raise StackError(
                    f"service {proc.name} exited during start-up; log {proc.log_file}:\n"
                    + log_tail(proc.log_file, start=offset)
                )
            if url is not None and http_ok(url, timeout=1.0):
                return pid
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if url is None:
            return pid
        proc.stop(timeout=5)
        raise StackError(
            f"service {proc.name}: {url} not 200 within {spec.start_timeout:.0f}s; log:\n"
            + log_tail(proc.log_file, start=offset)
        )

    def scale_service(self, spec: ServiceSpec, note: Callable[[str], None] = print) -> None:
        """Bring ``spec`` to its wanted count: start missing instances, stop surplus ones."""
        n = self.count(spec)
        indices = range(1, n + 1) if spec.scaling == "processes" else range(1, 2)
        for i in indices:
            name = instance_name(spec.name, i)
            proc = self._managed(name)
            pid = proc.pid()
            if pid is not None and proc.recorded_argv() == self.service_argv(spec):
                note(f"{name}: already running")
            else:
                note(f"{name}: {'restarting' if pid is not None else 'starting'}")
            self.start_service(spec, i)
        for i in self.running_instances(spec):
            if i > len(indices):
                name = instance_name(spec.name, i)
                note(f"{name}: stopping (scaled to {n})")
                self.stop(name)

    # -- whole stack ----------------------------------------------------------------------
    def up(
        self,
        *,
        with_services: bool = True,
        with_topics: bool = True,
        note: Callable[[str], None] = print,
    ) -> list[ComponentStatus]:
        """Start whatever is not running yet, in dependency order, and return the status."""
        self.announce_secrets(note)
        note(f"redis: {'already running' if self.redis.pid() else 'starting'}")
        self.start_redis()
        note(f"kafka: {'already running' if self.kafka.pid() else 'starting'}")
        self.start_kafka()
        if with_topics:
            try:
                counts = self.create_topics()
                note("topics: " + ", ".join(f"{n}({p})" for n, p in counts.items()))
                for warning in self.idle_members(counts):
                    note(f"warning: {warning}")
            except StackError as exc:
                if "schemas.topics is not available" not in str(exc):
                    raise
                note(f"topics: skipped, {exc}")
        if with_services:
            self.start_services(note)
        return self.status()

    def idle_members(self, partitions: Mapping[str, int]) -> list[str]:
        """One warning per consumer group asked for more members than its topics have
        partitions (``partitions``: name → count, as the broker reports them).

        Kafka gives each partition to one member of a group, and the processors' range
        assignment keeps an experiment's partitions of every topic on the same member, so
        the members beyond the largest partition count get nothing to do.
        """
        from schemas.topics import TopicNames

        names = TopicNames.with_prefix(self.config.topic_prefix)
        warnings = []
        for spec in self.services:
            n = self.count(spec)
            if spec.scaling != "processes" or not spec.consumes:
                continue
            topics = {getattr(names, field): 0 for field in spec.consumes}
            topics.update({t: partitions[t] for t in topics if t in partitions})
            busy = max(topics.values())
            if n > busy:
                listed = ", ".join(f"{t} {c}" for t, c in topics.items())
                warnings.append(
                    f"{n} {spec.name} instances but their topics have {busy} partitions at "
                    f"most ({listed}): {n - busy} will sit idle, as Kafka gives each "
                    "partition to one member of a consumer group (add partitions first: "
                    "docs/operations.md)"
                )
        return warnings

    def announce_secrets(self, note: Callable[[str], None] = print) -> None:
        """Where the stack's secrets come from. The admin key is printed (people paste
        it into curl); the Redis password never is: services get it in ``REDIS_URL``,
        and ``mab`` commands read it from its file."""
        if self.open_auth:
            note(f"auth: open ({AUTH_ENV}=open): admin calls need no key; loopback only")
            if os.environ.get(ADMIN_KEY_ENV, "").strip():
                note(f"{ADMIN_KEY_ENV} in your environment is not used in open mode")
        else:
            key = self.admin_key()
            if key.source == "env":
                note(f"admin key: from {ADMIN_KEY_ENV}")
            else:
                note(f"admin key ({key.source}, {key.path}): {key.value}")
        note(f"dashboard read key: {self.read_key().path}")
        password = self.redis_password()
        where = f"from {_password_env()}" if password.source == "env" else str(password.path)
        note(f"redis password ({password.source}): {where}")

    def start_services(self, note: Callable[[str], None] = print) -> None:
        """Bring every registered service to its wanted count; remember the counts."""
        save_scale(self.config.run_dir, self.scale)
        for spec in self.services:
            if not spec.available():
                note(f"{spec.name}: skipped, module {spec.module} does not exist yet")
                continue
            self.scale_service(spec, note)

    def stop(self, component: str, timeout: float | None = None) -> bool:
        """Stop one component we started (Kafka gets longer: controlled shutdown flushes logs)."""
        wait = timeout if timeout is not None else (30.0 if component == "kafka" else 10.0)
        return self._managed(component).stop(timeout=wait)

    def down(self) -> list[str]:
        """Stop services first (they hold clients), then Kafka, then Redis. Returns what stopped."""
        stopped: list[str] = []
        names = [s.name for s in reversed(self.services)]
        known = set(names)
        pid_dir = self.config.run_dir / "pids"
        if pid_dir.is_dir():  # services started by an earlier registry version
            names += sorted(
                p.stem
                for p in pid_dir.glob("*.pid")
                if p.stem not in known and p.stem not in ("kafka", "redis")
            )
        for name in [*names, "kafka", "redis"]:
            if self.stop(name):
                stopped.append(name)
        return stopped

    def status(self) -> list[ComponentStatus]:
        """Health of everything; a running server is probed on the port it was started with."""
        ports = self.config.ports
        rows: list[ComponentStatus] = []
        pid = self.redis.pid()
        redis_port = (self.redis.recorded_port() if pid else None) or ports.redis
        # Shown without the password; pinged with the stored one (nothing is generated
        # by a status call: a Redis whose password file is gone shows unhealthy).
        secret = read_secret(self.config.run_dir, REDIS_PASSWORD_FILE, _password_env())
        password = secret.value if secret is not None else None
        healthy = pid is not None and redis_ping(local_redis_url(redis_port, password))
        shown = local_redis_url(redis_port, None)
        rows.append(ComponentStatus("redis", pid, redis_port, pid is not None, healthy, shown))
        pid = self.kafka.pid()
        kafka_port = (self.kafka.recorded_port() if pid else None) or ports.kafka
        bootstrap = f"127.0.0.1:{kafka_port}"
        healthy = pid is not None and kafka_metadata_ok(bootstrap)
        rows.append(ComponentStatus("kafka", pid, kafka_port, pid is not None, healthy, bootstrap))
        for spec in self.services:
            rows += self._service_rows(spec)
        return rows

    def _service_rows(self, spec: ServiceSpec) -> list[ComponentStatus]:
        """One row per instance (wanted or running), plus one per worker of a supervisor."""
        ports = self.config.ports
        port = spec.port(ports) if spec.port is not None else None
        n = self.count(spec)
        indices = sorted(
            set(range(1, (n if spec.scaling == "processes" else 1) + 1))
            | set(self.running_instances(spec))
        )
        rows: list[ComponentStatus] = []
        for i in indices:
            name = instance_name(spec.name, i)
            pid = self._managed(name).pid()
            if pid is None and not spec.available():
                note = f"module {spec.module} does not exist yet"
                rows.append(ComponentStatus(name, None, port, False, False, note=note))
                continue
            health = spec.health_url(ports)
            url = spec.url(ports)
            if spec.metrics_port_env is not None:
                port = self._managed(name).recorded_port() if pid is not None else None
                url = health = f"http://127.0.0.1:{port}/metrics" if port else None
            healthy = pid is not None and (health is None or http_ok(health))
            rows.append(ComponentStatus(name, pid, port, pid is not None, healthy, url))
            workers = worker_children(pid) if spec.scaling == "workers" and pid else []
            # A one-worker server (granian always forks one) is one row, not two.
            if len(workers) > 1 or (pid is not None and spec.scaling == "workers" and n > 1):
                for k in range(1, max(n, len(workers)) + 1):
                    wpid = workers[k - 1] if k <= len(workers) else None
                    rows.append(
                        ComponentStatus(
                            f"{name}.w{k}",
                            wpid,
                            port,
                            wpid is not None,
                            wpid is not None and healthy,
                            note=f"worker of pid {pid}",
                        )
                    )
        return rows


@contextlib.contextmanager
def throwaway_stack(base: Path | None = None) -> Iterator[LocalStack]:
    """A stack in a temp dir on free ports; everything it started is stopped and deleted after."""
    stack = LocalStack(StackConfig.throwaway(base), services=[])
    try:
        yield stack
    finally:
        stack.down()
        shutil.rmtree(stack.config.run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Service registry: the one place to add a process ``mab up`` should run
# --------------------------------------------------------------------------------------------

SERVICES: list[ServiceSpec] = [
    ServiceSpec(
        name="decider",
        module="services.decider.app",
        argv=lambda p: [
            sys.executable,
            "-m",
            "services.decider",
            "--host",
            "127.0.0.1",
            "--port",
            str(p.api),
        ],
        port=lambda p: p.api,
        port_env=PORT_ENV["api"],
        health_path="/health",
        scaling="workers",
        keys="serve",
    ),
    ServiceSpec(
        name="reward-consumer",
        module="services.reward_consumer.__main__",
        argv=lambda p: [sys.executable, "-m", "services.reward_consumer"],
        metrics_port_env="MAB_METRICS_PORT",
        scaling="processes",
        consumes=("rewards", "decisions"),
    ),
    ServiceSpec(
        name="projector",
        module="services.projector.__main__",
        argv=lambda p: [sys.executable, "-m", "services.projector"],
        metrics_port_env="MAB_METRICS_PORT",
        scaling="processes",
        consumes=("rewards", "decisions", "experiments"),
    ),
    ServiceSpec(
        name="dashboard",
        module="dashboard.app",
        argv=lambda p: [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "dashboard/app.py",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(p.dashboard),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        port=lambda p: p.dashboard,
        port_env=PORT_ENV["dashboard"],
        health_path="/_stcore/health",
        start_timeout=60.0,
        keys="read",  # it lists, reads stats and time series, evaluates: nothing more
    ),
    ServiceSpec(
        name="demo-traffic",
        module="demo_traffic.__main__",
        argv=lambda p: [sys.executable, "-m", "demo_traffic"],
        # MAB_API_URL comes from service_env() (the decider's port of this stack).
        keys="admin",  # it creates its experiment
    ),
]

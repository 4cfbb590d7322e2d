"""The local Redis: Debian's ``redis-server`` (installed with apt when missing), always
with a password, AOF on for ``mab up`` and no persistence for throwaway stacks.

The password reaches redis-server in a 0600 config file, never on its command line,
where ``ps`` would show it; services and clients get it inside ``REDIS_URL``
(:func:`local_redis_url`), and ``mab`` commands run without ``REDIS_URL`` find the local
stack's Redis and its stored password (:func:`default_redis_url`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from deploy.stack.config import STATE_DIR, StackConfig
from deploy.stack.errors import StackError
from deploy.stack.ports import PORT_ENV, Ports, require_port_free
from deploy.stack.process import ManagedProcess, log_tail
from deploy.stack.secrets import REDIS_PASSWORD_FILE, password_env, read_secret, write_private

#: The password goes to redis-server in this file, never on its command line (``ps``).
REDIS_CONF_FILE = "redis.conf"


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
    secret = read_secret(run_dir or STATE_DIR, REDIS_PASSWORD_FILE, password_env(), env)
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


def redis_auth_config(password: str) -> str:
    """The redis.conf lines that make ``redis-server`` require ``password``. Replicas
    and cluster peers authenticate to each other with the same one (``masterauth``)."""
    quoted = redis_conf_quote(password)
    return (
        "# Written by deploy/stack/redis_server.py on every start; mode 0600: it holds the\n"
        "# password, which must not show on redis-server's command line.\n"
        f"requirepass {quoted}\nmasterauth {quoted}\n"
    )


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    import redis  # lazy: keeps `mab --help` fast

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


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


def redis_server_argv(binary: str, conf: Path, port: int, data: Path) -> list[str]:
    """The command line every local redis-server starts with (the stack's, a cluster
    node's): its 0600 config file first (the password), loopback only, in the
    foreground so that we supervise it, its files in ``data``."""
    return [
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


def start_redis(
    server: ManagedProcess,
    config: StackConfig,
    password: Callable[[], str],
    timeout: float = 20.0,
) -> int:
    """Start redis-server: AOF on for the product, no persistence for throwaway stacks.

    Returns at once when ``server`` already runs. ``password`` is asked for only when a
    server is started. A running one that answers without a password was started by a
    ``mab up`` from before passwords: the services would be refused by it, so say how to
    restart it (its AOF data is kept) instead of reporting it healthy.
    """
    pid = server.pid()
    if pid is not None:
        port = server.recorded_port() or config.ports.redis
        if redis_ping(local_redis_url(port, None)):
            raise StackError(
                f"redis-server (pid {pid}) runs without a password; restart it with "
                "one (data is kept): mab down && mab up"
            )
        return pid
    port = config.ports.redis
    require_port_free(port, PORT_ENV["redis"])
    binary = ensure_redis_server()
    data = config.redis_dir
    data.mkdir(parents=True, exist_ok=True)
    secret = password()
    conf = config.run_dir / REDIS_CONF_FILE
    write_private(conf, redis_auth_config(secret))
    argv = redis_server_argv(binary, conf, port, data)
    persistence = ["--appendonly", "yes"]
    if not config.persistent:
        persistence = ["--save", "", "--appendonly", "no"]
    argv += persistence
    pid, offset = server.spawn(argv, port=port)
    url = local_redis_url(port, secret)
    answered = server.wait_ready(
        pid,
        offset,
        lambda: redis_ping(url, timeout=0.5),
        timeout,
        what="redis-server",
        interval=0.1,
    )
    if answered:
        return pid
    server.stop(timeout=5)
    raise StackError(
        f"redis-server did not answer PING within {timeout:.0f}s; log:\n"
        + log_tail(server.log_file, start=offset)
    )

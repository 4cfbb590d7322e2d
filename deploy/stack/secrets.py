"""The stack's secrets: the decider's admin key, the dashboard's read-only key and the
Redis password. Where each comes from, where it is kept, and who is given which.

Each is taken from its environment variable when set, else from its file in the run dir
(mode 0600, created atomically on first use), so a second ``mab up`` and every ``mab``
command agree with the first without the secret ever being typed. The admin key is
printed (people paste it into curl); the read key and the Redis password never are.
Each service gets only the key it needs (:meth:`StackSecrets.keys_env`).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deploy.stack.errors import StackError

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
#: The variables that carry keys: a service gets them from :meth:`StackSecrets.keys_env`
#: only, never inherited from the shell that ran ``mab up``.
KEY_ENVS = (ADMIN_KEY_ENV, READ_KEYS_ENV, API_KEY_ENV, AUTH_ENV)

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
    return ensure_secret(run_dir, REDIS_PASSWORD_FILE, password_env(), env)


def password_env() -> str:
    """The variable that carries a Redis password (the clients' own: one name)."""
    from stream_runtime.redis_client import PASSWORD_ENV  # lazy: keeps `mab --help` fast

    return PASSWORD_ENV


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


class StackSecrets:
    """The secrets of one stack, each read or generated on first use and then kept.

    ``open_auth`` is ``mab up --open``: the decider serves admin calls without a key, so
    no admin key is created or handed to anyone.
    """

    def __init__(self, run_dir: Path, open_auth: bool = False) -> None:
        self.run_dir = run_dir
        self.open_auth = open_auth
        self._admin_key: StackSecret | None = None
        self._read_key: StackSecret | None = None
        self._redis_password: StackSecret | None = None

    def admin_key(self) -> StackSecret:
        """The decider's admin key, also given to the demo traffic (see
        :func:`ensure_admin_key`)."""
        if self._admin_key is None:
            self._admin_key = ensure_admin_key(self.run_dir)
        return self._admin_key

    def read_key(self) -> StackSecret:
        """The dashboard's read-only key, stored next to the admin key (never from the
        environment: ``MAB_READ_KEYS`` may list several)."""
        if self._read_key is None:
            self._read_key = ensure_secret(self.run_dir, READ_KEY_FILE, None)
        return self._read_key

    def redis_password(self) -> StackSecret:
        """The password of this stack's Redis (see :func:`ensure_redis_password`)."""
        if self._redis_password is None:
            self._redis_password = ensure_redis_password(self.run_dir)
        return self._redis_password

    def keys_env(self, keys: KeyUse) -> dict[str, str]:
        """The key variables of a service that uses the stack's keys as ``keys`` says."""
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

    def announce(self, note: Callable[[str], None] = print) -> None:
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
        where = f"from {password_env()}" if password.source == "env" else str(password.path)
        note(f"redis password ({password.source}): {where}")

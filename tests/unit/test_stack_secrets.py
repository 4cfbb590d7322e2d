"""``mab up``'s secrets (deploy/stack/secrets.py): the admin key and the Redis password
taken from the env, else stored once (0600) and reused; the dashboard's read key stored
the same way; each service given only its own; the password never shown."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deploy.stack.config import StackConfig
from deploy.stack.errors import StackError
from deploy.stack.local import LocalStack
from deploy.stack.ports import Ports
from deploy.stack.redis_server import local_redis_url
from deploy.stack.secrets import (
    ADMIN_KEY_FILE,
    READ_KEY_FILE,
    REDIS_PASSWORD_FILE,
    ensure_admin_key,
    ensure_redis_password,
)
from deploy.stack.services import SERVICES
from services.decider.auth import MIN_KEY_LEN, AuthPolicy

pytestmark = pytest.mark.unit


def test_env_key_wins_and_nothing_is_written(tmp_path: Path) -> None:
    key = ensure_admin_key(tmp_path, {"MAB_ADMIN_KEY": "  from-the-environment-123  "})
    assert (key.value, key.source, key.path) == ("from-the-environment-123", "env", None)
    assert not (tmp_path / ADMIN_KEY_FILE).exists()


def test_generated_once_private_then_reused(tmp_path: Path) -> None:
    run_dir = tmp_path / "state"  # created on demand
    first = ensure_admin_key(run_dir, {})
    assert first.source == "generated"
    assert first.path == run_dir / ADMIN_KEY_FILE
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert len(first.value) >= MIN_KEY_LEN
    AuthPolicy(first.value)  # a valid key for the decider
    again = ensure_admin_key(run_dir, {"MAB_ADMIN_KEY": ""})  # empty = unset
    assert (again.value, again.source) == (first.value, "stored")
    other = ensure_admin_key(tmp_path / "elsewhere", {})
    assert other.value != first.value


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / ADMIN_KEY_FILE
    path.write_text("hand-written-admin-key-1234\n")
    path.chmod(0o644)
    key = ensure_admin_key(tmp_path, {})
    assert (key.value, key.source) == ("hand-written-admin-key-1234", "stored")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_empty_key_file_is_an_error_not_an_open_api(tmp_path: Path) -> None:
    (tmp_path / ADMIN_KEY_FILE).write_text("\n")
    with pytest.raises(StackError, match="empty"):
        ensure_admin_key(tmp_path, {})


def test_each_service_gets_only_the_key_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decider gets the keys it checks (admin and the stored read key); the demo
    traffic sends the admin key (it creates its experiment), the dashboard the read key
    (it only reads); the stream processors get none, even from our own environment."""
    monkeypatch.delenv("MAB_ADMIN_KEY", raising=False)
    monkeypatch.setenv("MAB_API_KEY", "leaked-from-the-shell-123456")
    config = StackConfig(run_dir=tmp_path, ports=Ports(), persistent=False)
    stack = LocalStack(config, services=[])
    decider = stack.service_env("serve")
    admin = (tmp_path / ADMIN_KEY_FILE).read_text().strip()
    read = (tmp_path / READ_KEY_FILE).read_text().strip()
    assert stat.S_IMODE((tmp_path / READ_KEY_FILE).stat().st_mode) == 0o600
    assert admin != read
    AuthPolicy.parse(admin, None, read)  # valid keys for the decider
    assert (decider["MAB_AUTH"], decider["MAB_ADMIN_KEY"], decider["MAB_READ_KEYS"]) == (
        "keys",
        admin,
        read,
    )
    assert "MAB_API_KEY" not in decider
    assert stack.service_env("admin")["MAB_API_KEY"] == admin
    dashboard = stack.service_env("read")
    assert dashboard["MAB_API_KEY"] == read
    assert "MAB_ADMIN_KEY" not in dashboard
    consumer = stack.service_env()
    assert not {"MAB_API_KEY", "MAB_ADMIN_KEY", "MAB_READ_KEYS", "MAB_AUTH"} & set(consumer)
    monkeypatch.setenv("MAB_ADMIN_KEY", "operator-chosen-key-123456")
    again = LocalStack(config, services=[])
    assert again.service_env("serve")["MAB_ADMIN_KEY"] == "operator-chosen-key-123456"
    assert again.service_env("admin")["MAB_API_KEY"] == "operator-chosen-key-123456"
    assert again.service_env("read")["MAB_API_KEY"] == read  # the stored read key again


def test_open_stack_gives_no_admin_key_and_says_so_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mab up --open`: the decider runs with MAB_AUTH=open (on its argv too, so switching
    modes restarts it), no admin key anywhere even if our shell has one; the dashboard
    keeps its read key."""
    monkeypatch.setenv("MAB_ADMIN_KEY", "operator-chosen-key-123456")
    config = StackConfig(run_dir=tmp_path, ports=Ports(), persistent=False)
    decider_spec = next(s for s in SERVICES if s.name == "decider")
    stack = LocalStack(config, services=[decider_spec], open_auth=True)
    decider = stack.service_env("serve")
    assert decider["MAB_AUTH"] == "open"
    assert "MAB_ADMIN_KEY" not in decider
    assert "MAB_API_KEY" not in stack.service_env("admin")
    assert stack.service_env("read")["MAB_API_KEY"] == decider["MAB_READ_KEYS"]
    assert not (tmp_path / ADMIN_KEY_FILE).exists()
    assert stack.service_argv(decider_spec)[-2:] == ["--auth", "open"]
    keyed = LocalStack(config, services=[decider_spec])
    assert "--auth" not in keyed.service_argv(decider_spec)


def test_env_redis_password_wins_and_nothing_is_written(tmp_path: Path) -> None:
    secret = ensure_redis_password(tmp_path, {"REDIS_PASSWORD": "operator-chosen"})
    assert (secret.value, secret.source, secret.path) == ("operator-chosen", "env", None)
    assert not (tmp_path / REDIS_PASSWORD_FILE).exists()


def test_redis_password_generated_once_private_then_reused(tmp_path: Path) -> None:
    first = ensure_redis_password(tmp_path / "state", {})
    assert first.source == "generated"
    assert first.path is not None
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert len(first.value) >= 32
    again = ensure_redis_password(tmp_path / "state", {"REDIS_PASSWORD": ""})
    assert (again.value, again.source) == (first.value, "stored")
    assert ensure_redis_password(tmp_path / "other", {}).value != first.value


def test_services_get_the_redis_password_status_and_notes_never_show_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    stack = LocalStack(StackConfig(run_dir=tmp_path, ports=Ports.free(), persistent=False), [])
    env = stack.service_env()
    password = (tmp_path / REDIS_PASSWORD_FILE).read_text().strip()
    assert env["REDIS_URL"] == local_redis_url(stack.config.ports.redis, password)
    notes: list[str] = []
    stack.secrets.announce(notes.append)
    (row,) = [r for r in stack.status() if r.name == "redis"]  # not running: not pinged
    shown = "\n".join([*notes, str(row.as_dict())])
    assert password not in shown
    assert str(tmp_path / REDIS_PASSWORD_FILE) in shown
    assert row.url == f"redis://127.0.0.1:{stack.config.ports.redis}/0"

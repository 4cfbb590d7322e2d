"""``mab up``'s admin key: taken from the env, else stored once (0600) and reused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deploy.local_stack import (
    ADMIN_KEY_FILE,
    LocalStack,
    Ports,
    StackConfig,
    StackError,
    ensure_admin_key,
)
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


def test_services_get_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decider requires it (MAB_ADMIN_KEY); dashboard and demo send it (MAB_API_KEY)."""
    monkeypatch.delenv("MAB_ADMIN_KEY", raising=False)
    config = StackConfig(run_dir=tmp_path, ports=Ports(), persistent=False)
    env = LocalStack(config, services=[]).service_env()
    stored = (tmp_path / ADMIN_KEY_FILE).read_text().strip()
    assert env["MAB_ADMIN_KEY"] == env["MAB_API_KEY"] == stored
    monkeypatch.setenv("MAB_ADMIN_KEY", "operator-chosen-key-123456")
    env = LocalStack(config, services=[]).service_env()
    assert env["MAB_ADMIN_KEY"] == env["MAB_API_KEY"] == "operator-chosen-key-123456"


@pytest.mark.parametrize("bad", ["short", "has space in the key!!", "comma,in,the,key,12345"])
def test_weak_or_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="at least"):
        AuthPolicy.parse(bad, None)
    with pytest.raises(ValueError, match="at least"):
        AuthPolicy.parse(None, f"good-client-key-123456,{bad}" if "," not in bad else "x")


def test_principal_compares_every_key() -> None:
    policy = AuthPolicy.parse("admin-key-0123456789", "client-a-0123456789, client-b-0123456789")
    assert policy.principal(b"Bearer admin-key-0123456789") == "admin"
    assert policy.principal(b"bearer client-b-0123456789") == "client-1"
    assert policy.principal(b"Bearer client-b-012345678") is None  # a prefix is no key
    assert policy.principal(b"Basic admin-key-0123456789") is None
    assert policy.principal(None) is None

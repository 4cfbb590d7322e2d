"""``mab up``'s Redis password: from ``REDIS_PASSWORD``, else stored once (0600) and
reused; handed to services in ``REDIS_URL``, to redis-server in a 0600 file, and never
shown (status rows, ``mab up``'s notes)."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import quote

import pytest

from deploy.local_stack import (
    REDIS_CONF_FILE,
    REDIS_PASSWORD_FILE,
    LocalStack,
    Ports,
    StackConfig,
    default_redis_url,
    ensure_redis_password,
    local_redis_url,
    redis_auth_config,
    redis_conf_quote,
)
from stream_runtime.redis_client import credentials, redact

pytestmark = pytest.mark.unit


def test_env_password_wins_and_nothing_is_written(tmp_path: Path) -> None:
    secret = ensure_redis_password(tmp_path, {"REDIS_PASSWORD": "operator-chosen"})
    assert (secret.value, secret.source, secret.path) == ("operator-chosen", "env", None)
    assert not (tmp_path / REDIS_PASSWORD_FILE).exists()


def test_generated_once_private_then_reused(tmp_path: Path) -> None:
    first = ensure_redis_password(tmp_path / "state", {})
    assert first.source == "generated"
    assert first.path is not None
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert len(first.value) >= 32
    again = ensure_redis_password(tmp_path / "state", {"REDIS_PASSWORD": ""})
    assert (again.value, again.source) == (first.value, "stored")
    assert ensure_redis_password(tmp_path / "other", {}).value != first.value


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain-Token_123", '"plain-Token_123"'),
        ('say "hi" \\ # now', '"say \\"hi\\" \\\\ # now"'),
        ("tab\there\n", '"tab\\x09here\\x0a"'),
        ("été", '"été"'),
    ],
)
def test_config_quoting_keeps_any_password_intact(value: str, quoted: str) -> None:
    assert redis_conf_quote(value) == quoted
    assert f"requirepass {quoted}\n" in redis_auth_config(value)


def test_the_url_carries_the_password_encoded_and_redacts_cleanly() -> None:
    secret = "p@ss:w/rd %"
    url = local_redis_url(6390, secret)
    assert url == f"redis://:{quote(secret, safe='')}@127.0.0.1:6390/0"
    assert secret not in redact(url)
    assert local_redis_url(6390, None) == "redis://127.0.0.1:6390/0"


def test_services_get_it_status_and_notes_never_show_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    stack = LocalStack(StackConfig(run_dir=tmp_path, ports=Ports.free(), persistent=False), [])
    env = stack.service_env()
    password = (tmp_path / REDIS_PASSWORD_FILE).read_text().strip()
    assert env["REDIS_URL"] == local_redis_url(stack.config.ports.redis, password)
    notes: list[str] = []
    stack.announce_secrets(notes.append)
    (row,) = [r for r in stack.status() if r.name == "redis"]  # not running: not pinged
    shown = "\n".join([*notes, str(row.as_dict())])
    assert password not in shown
    assert str(tmp_path / REDIS_PASSWORD_FILE) in shown
    assert row.url == f"redis://127.0.0.1:{stack.config.ports.redis}/0"


def test_the_server_config_is_private_and_holds_the_password(tmp_path: Path) -> None:
    """start_redis writes it before spawning; here only the file, not the process."""
    from deploy.local_stack import write_private

    conf = tmp_path / REDIS_CONF_FILE
    conf.write_text("stale\n")
    conf.chmod(0o644)
    write_private(conf, redis_auth_config("pw-xyz"))
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert 'requirepass "pw-xyz"' in conf.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [REDIS_CONF_FILE]  # no temp file left


def test_cli_default_url_is_the_local_stacks_with_its_password(tmp_path: Path) -> None:
    """What ``mab`` commands use without REDIS_URL (mab_cli/main.py)."""
    assert default_redis_url({}, tmp_path) is None  # no stack ever stored one
    secret = ensure_redis_password(tmp_path, {})
    url = default_redis_url({"MAB_REDIS_PORT": "6390"}, tmp_path)
    assert url == local_redis_url(6390, secret.value)
    assert default_redis_url({"REDIS_URL": "redis://elsewhere:1/0"}, tmp_path) is None
    # A URL with the password needs no REDIS_PASSWORD on top.
    assert url is not None
    assert credentials(url, {"REDIS_PASSWORD": "other"}) == {}

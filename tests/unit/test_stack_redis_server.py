"""The local Redis and its password (deploy/stack/redis_server.py): handed to services in
``REDIS_URL``, to redis-server in a 0600 file whose quoting keeps any password intact,
and found by ``mab`` commands run without ``REDIS_URL``. Where the password comes from:
test_stack_secrets.py; a real redis-server: tests/integration/test_stack_redis_auth.py."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import quote

import pytest

from deploy.stack.redis_server import (
    REDIS_CONF_FILE,
    default_redis_url,
    local_redis_url,
    redis_auth_config,
    redis_conf_quote,
)
from deploy.stack.secrets import ensure_redis_password, write_private
from stream_runtime.redis_client import credentials, redact

pytestmark = pytest.mark.unit


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


def test_the_server_config_is_private_and_holds_the_password(tmp_path: Path) -> None:
    """start_redis writes it before spawning; here only the file, not the process."""
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

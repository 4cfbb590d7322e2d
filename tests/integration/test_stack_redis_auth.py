"""Redis AUTH against the real redis-server: the stack's Redis refuses a client without
its password (NOAUTH), and every way of giving it (in ``REDIS_URL``, or
``REDIS_PASSWORD`` next to a plain URL) works for the clients the product has: the
services' factory and ``mab replay`` (the container probe: test_runtime_probe.py). The password
never shows on redis-server's command line, in ``mab status`` or in an error."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from deploy.stack.config import StackConfig
from deploy.stack.errors import StackError
from deploy.stack.local import LocalStack
from deploy.stack.ports import wait_port_open
from deploy.stack.redis_server import REDIS_CONF_FILE, ensure_redis_server, local_redis_url
from stream_runtime.redis_client import redis_from_url
from tests.fixtures.streams import run_replay
from tests.integration.conftest import LOCKED_PASSWORD as PASSWORD

pytestmark = pytest.mark.integration


def plain_url(stack: LocalStack) -> str:
    return local_redis_url(stack.config.ports.redis, None)


async def test_a_client_without_the_password_gets_noauth(locked_redis: LocalStack) -> None:
    # The server's own words, without a client library in between.
    reader, writer = await asyncio.open_connection("127.0.0.1", locked_redis.config.ports.redis)
    writer.write(b"PING\r\n")
    assert await reader.readline() == b"-NOAUTH Authentication required.\r\n"
    writer.close()
    await writer.wait_closed()
    # redis-py raises its NOAUTH error (AuthenticationError) at the connection's HELLO.
    client = Redis.from_url(plain_url(locked_redis))
    with pytest.raises(redis.AuthenticationError, match="authenticated"):
        await client.ping()
    await client.aclose()
    wrong = Redis.from_url(local_redis_url(locked_redis.config.ports.redis, "not-it-42"))
    with pytest.raises(redis.AuthenticationError) as refused:
        await wrong.ping()
    await wrong.aclose()
    assert "not-it-42" not in str(refused.value)


async def test_the_password_works_in_the_url_and_from_the_environment(
    locked_redis: LocalStack,
) -> None:
    in_url = redis_from_url(locked_redis.redis_url)
    from_env = redis_from_url(plain_url(locked_redis), env={"REDIS_PASSWORD": PASSWORD})
    try:
        assert await in_url.set("auth-check", "1")
        assert await from_env.get("auth-check") == b"1"
    finally:
        await in_url.aclose()
        await from_env.aclose()


def test_the_password_is_on_no_command_line_and_in_no_status(locked_redis: LocalStack) -> None:
    pid = locked_redis.redis.pid()
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert PASSWORD not in cmdline
    conf = locked_redis.config.run_dir / REDIS_CONF_FILE
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    (row,) = [r for r in locked_redis.status() if r.name == "redis"]
    assert (row.running, row.healthy) == (True, True)  # pinged with the stored password
    assert PASSWORD not in str(row.as_dict())
    assert "p%40ss" not in str(row.as_dict())  # nor percent-encoded


def test_replay_takes_the_password_from_redis_password(
    locked_redis: LocalStack, kafka_bootstrap: str, ns: str, topics: dict[str, int]
) -> None:
    """``mab replay`` in a pod: a plain REDIS_URL from a ConfigMap, REDIS_PASSWORD from a
    Secret. Without the password it fails with one clear line, not a traceback."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": plain_url(locked_redis),
        "MAB_TOPIC_PREFIX": ns,
        "MAB_REDIS_PREFIX": ns,
    }
    ok = run_replay({**env, "REDIS_PASSWORD": PASSWORD}, "--verify", "--workers", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "identical" in ok.stdout
    refused = run_replay({**env, "REDIS_PASSWORD": ""}, "--verify", "--workers", "1")
    assert refused.returncode != 0
    assert "error: cannot reach Kafka or Redis: Redis refused the credentials" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_redis_started_without_a_password_is_not_taken_for_the_stacks(
    tmp_path: Path,
) -> None:
    """Scenario: a Redis left running by a mab up from before passwords. We expect mab up
    to stop with the fix (its data survives a restart), not to hand the services a
    password that Redis would refuse."""
    stack = LocalStack(StackConfig.throwaway(tmp_path), services=[])
    port = stack.config.ports.redis
    stack.redis.spawn(
        [ensure_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        port=port,
    )
    try:
        assert wait_port_open(port, 10)
        with pytest.raises(StackError, match=r"runs without a password.*mab down && mab up"):
            stack.start_redis()
    finally:
        stack.down()
    assert stack.redis.pid() is None

"""Without a server: URLs (cluster seeds, credentials, TLS files, masking), and every
multi-key call stays in one slot."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from schemas.redis_keys import RedisKeys
from stream_runtime.redis_client import (
    RedisUrlError,
    check_url,
    cluster_nodes,
    credentials,
    is_cluster_url,
    redact,
    redis_from_url,
)

pytestmark = pytest.mark.unit


def test_cluster_urls_name_their_seed_nodes() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,node-c:7002"
    assert is_cluster_url(url)
    assert not is_cluster_url("redis://127.0.0.1:6379/0")
    assert cluster_nodes(url) == [("127.0.0.1", 7000), ("127.0.0.1", 7001), ("node-c", 7002)]
    assert cluster_nodes("rediss+cluster://user:pw@h:1/0") == [("h", 1)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster://h", "not host:port"),
        ("redis+cluster://h:1,:2", "not host:port"),
        ("redis+cluster://h:\u00b2", "not host:port"),  # isdigit() alone took it
        ("redis://h:1/0", "not a cluster URL"),
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        cluster_nodes(url)


SECRET = "s3cr:t/p@ss word"  # every URL-reserved character a password may hold


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        (
            "rediss://app:pw@h:1/0?ssl_ca_certs=/ca.pem",
            "rediss://app:***@h:1/0?ssl_ca_certs=/ca.pem",
        ),
        ("redis+cluster://:p%40w@a:1,b:2", "redis+cluster://:***@a:1,b:2"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://app@h:1/0", "redis://app@h:1/0"),
    ],
)
def test_redact_masks_the_password_only(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_the_urls_password_wins_else_the_environment_supplies_it() -> None:
    env = {"REDIS_PASSWORD": SECRET, "REDIS_USERNAME": "svc"}
    assert credentials("redis://:own@h:1/0", env) == {}
    assert credentials("redis://h:1/0", env) == {"password": SECRET, "username": "svc"}
    assert credentials("redis://acl-user@h:1/0", env) == {"password": SECRET}
    assert credentials("redis://h:1/0", {"REDIS_PASSWORD": ""}) == {}  # empty = unset
    assert credentials("redis://h:1/0", {"REDIS_USERNAME": "svc"}) == {}


async def test_both_client_kinds_get_the_environments_password() -> None:
    env = {"REDIS_PASSWORD": SECRET}
    single = redis_from_url("redis://127.0.0.1:1/0", env=env)
    cluster = redis_from_url("redis+cluster://127.0.0.1:1,127.0.0.1:2", env=env)
    own = redis_from_url("redis://:url-pass@127.0.0.1:1/0", env=env)
    assert isinstance(single, Redis)
    assert isinstance(cluster, RedisCluster)
    assert isinstance(own, Redis)
    assert single.connection_pool.connection_kwargs["password"] == SECRET
    assert cluster.connection_kwargs["password"] == SECRET
    assert own.connection_pool.connection_kwargs["password"] == "url-pass"
    for client in (single, cluster, own):
        await client.aclose()


def test_tls_files_and_schemes_are_checked_before_any_client_exists(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    check_url(f"rediss://:{SECRET}@h:1/0?ssl_ca_certs={ca}")
    check_url(f"rediss+cluster://h:1,h:2?ssl_ca_certs={ca}&ssl_cert_reqs=required")
    with pytest.raises(RedisUrlError, match=r"ssl_ca_certs=.*no readable file") as missing:
        check_url(f"rediss://:pw-123@h:1/0?ssl_ca_certs={tmp_path / 'nope.pem'}")
    with pytest.raises(RedisUrlError, match="use a rediss:// URL") as plain:
        redis_from_url(f"redis://:pw-123@h:1/0?ssl_ca_certs={ca}")
    for error in (missing, plain):
        assert "pw-123" not in str(error.value)


def test_cluster_url_errors_mask_the_password() -> None:
    with pytest.raises(RedisUrlError, match="not host:port") as bad:
        cluster_nodes("redis+cluster://:pw-123@h:1,nope")
    assert "pw-123" not in str(bad.value)
    assert "***" in str(bad.value)


async def test_the_factory_picks_the_client_kind_without_connecting() -> None:
    single = redis_from_url("redis://127.0.0.1:1/0")
    cluster = redis_from_url("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    assert isinstance(single, Redis)
    assert isinstance(cluster, RedisCluster)
    assert sorted((n.host, n.port) for n in cluster.startup_nodes) == [
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
    ]
    await single.aclose()
    await cluster.aclose()


@pytest.mark.parametrize("prefix", ["", "t1a2b3c4-", "tenant.a:"])
@pytest.mark.parametrize("experiment", ["cta-button-test", "a", "x" * 120, "A.b_c-9"])
def test_every_key_of_an_experiment_shares_one_slot(prefix: str, experiment: str) -> None:
    """Each Lua script and MGET passes keys of one experiment only; this is why that is
    legal on a cluster (and why the slots differ between experiments)."""
    k = RedisKeys(prefix).experiment(experiment)
    keys = [
        k.config,
        k.snapshot,
        k.offsets,
        k.seen,
        k.projector_offsets,
        k.projector_seen,
        k.change_points,
        k.hour_bucket(1_795_820_400),
        k.minute_bucket(1_795_820_460),
    ]
    assert {key_slot(key.encode()) for key in keys} == {key_slot(experiment.encode())}


def test_experiments_spread_over_slots() -> None:
    slots = {key_slot(RedisKeys().experiment(f"exp-{i}").config.encode()) for i in range(100)}
    assert len(slots) > 90


def test_a_prefix_cannot_capture_the_hash_tag() -> None:
    with pytest.raises(ValueError, match="must not contain braces"):
        RedisKeys("{tenant}-")

"""Cluster readiness without a server: URLs, and every multi-key call stays in one slot."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from schemas.redis_keys import RedisKeys
from stream_runtime.redis_client import (
    RedisUrlError,
    cluster_nodes,
    is_cluster_url,
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

"""One way for every service to open Redis: a single node or a Redis Cluster, by URL.

``REDIS_URL`` decides, so no service has a second setting to get wrong:

* ``redis://host:port/0`` (or ``rediss://``): one node, :class:`redis.asyncio.Redis`;
* ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): a Redis
  Cluster, :class:`redis.asyncio.cluster.RedisCluster`, seeded with those nodes (it
  discovers the rest and follows ``MOVED``/``ASK``). A cluster has only database 0.

Every key of one experiment shares the hash tag ``{<experiment id>}``
(:mod:`schemas.redis_keys`), so each Lua script and each multi-key command of one
experiment runs in one slot. What differs on a cluster is batching: redis-py refuses
``EVALSHA`` and ``PUBLISH`` inside a cluster pipeline, so :func:`run_scripts` sends one
pipeline (one round trip) to a single node and concurrent calls to a cluster (one
round trip per node in flight, each script still atomic per experiment).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript

#: A client of either kind; both speak the commands the services use.
AnyRedis: TypeAlias = Redis | RedisCluster

CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class RedisUrlError(ValueError):
    """A ``REDIS_URL`` we cannot open; the message says what is wrong with it."""


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a ``redis+cluster://`` URL, validated."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise RedisUrlError(f"not a cluster URL (want redis+cluster://host:port,...): {url!r}")
    if parts.path not in ("", "/", "/0"):
        raise RedisUrlError(f"a Redis Cluster has only database 0, got {parts.path!r}")
    hosts = parts.netloc.rsplit("@", 1)[-1]
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise RedisUrlError(f"cluster node {item!r} is not host:port in {url!r}")
        nodes.append((host, int(port)))
    return nodes


def redis_from_url(url: str, **kwargs: Any) -> AnyRedis:
    """Open ``url`` as a single-node client or a cluster client (see module docstring).

    ``kwargs`` are connection options both accept (timeouts, ``decode_responses``,
    ``health_check_interval``)."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return Redis.from_url(url, **kwargs)
    nodes = cluster_nodes(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    first = f"{nodes[0][0]}:{nodes[0][1]}"
    base = urlunsplit((CLUSTER_SCHEMES[parts.scheme], userinfo + first, "", parts.query, ""))
    # from_url() adds the URL's node itself; the others join as further seeds.
    others = [ClusterNode(h, p) for h, p in nodes[1:]]
    return RedisCluster.from_url(base, startup_nodes=others, **kwargs)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One Lua script call; all ``keys`` share one experiment's hash tag."""

    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Any]


async def run_scripts(
    client: AnyRedis, calls: Sequence[ScriptCall], publish: Sequence[tuple[str, str]] = ()
) -> list[Any]:
    """Run ``calls`` (then ``publish`` (channel, message) pairs); the scripts' replies in
    order. Raises the first error, as a pipeline with ``raise_on_error`` does."""
    if isinstance(client, RedisCluster):
        replies = await asyncio.gather(
            *(c.script(keys=list(c.keys), args=list(c.args)) for c in calls)
        )
        await asyncio.gather(*(client.publish(ch, msg) for ch, msg in publish))
        return list(replies)
    async with client.pipeline(transaction=False) as pipe:
        for c in calls:
            await c.script(keys=list(c.keys), args=list(c.args), client=pipe)
        for ch, msg in publish:
            pipe.publish(ch, msg)
        replies = await pipe.execute()
    return list(replies[: len(calls)])

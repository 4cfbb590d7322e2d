"""One way for every service to open Redis: a single node or a Redis Cluster, by URL.

``REDIS_URL`` decides, so no service has a second setting to get wrong:

* ``redis://host:port/0`` (or ``rediss://``): one node, :class:`redis.asyncio.Redis`;
* ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): a Redis
  Cluster, :class:`redis.asyncio.cluster.RedisCluster`, seeded with those nodes (it
  discovers the rest and follows ``MOVED``/``ASK``). A cluster has only database 0.

Credentials travel one of two ways, the URL's own first:

* in the URL, ``redis://:PASSWORD@host:port/0`` (``user:PASSWORD@`` for an ACL user),
  percent-encoded: what the original mab-ecommerce-optimizer API's clients understand,
  and what ``mab up`` hands its services;
* ``REDIS_PASSWORD`` (and ``REDIS_USERNAME``) in the environment, used only when the URL
  carries no password: a Kubernetes Secret or a compose ``.env`` holds the password
  apart from the URL, and no password ever needs percent-encoding.

TLS is the ``rediss`` scheme; a server certificate from a private CA is trusted with the
URL's own ``ssl_ca_certs`` query parameter (``rediss://host:6380/0?ssl_ca_certs=/ca.pem``),
which redis-py reads itself, so every client of the URL agrees on it. The URL is checked
before a client exists: a CA file that is not there, or a TLS setting on a plain
``redis://`` URL, is a :class:`RedisUrlError` naming it, not a failure at the first
command. Every message shows the URL with its password masked (:func:`redact`).

Every key of one experiment shares the hash tag ``{<experiment id>}``
(:mod:`schemas.redis_keys`), so each Lua script and each multi-key command of one
experiment runs in one slot. What differs on a cluster is batching: redis-py refuses
``EVALSHA`` and ``PUBLISH`` inside a cluster pipeline, so :func:`run_scripts` sends one
pipeline (one round trip) to a single node and concurrent calls to a cluster (one
round trip per node in flight, each script still atomic per experiment).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError

#: A client of either kind; both speak the commands the services use.
AnyRedis: TypeAlias = Redis | RedisCluster

CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
TLS_SCHEMES: Final = frozenset({"rediss", "rediss+cluster"})
#: The password (and ACL user) of a ``REDIS_URL`` that carries none.
PASSWORD_ENV: Final = "REDIS_PASSWORD"  # noqa: S105 (a variable name, not a value)
USERNAME_ENV: Final = "REDIS_USERNAME"
AUTH_ENV: Final = frozenset({PASSWORD_ENV, USERNAME_ENV})
#: URL query parameters naming files of the TLS handshake.
TLS_FILE_PARAMS: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
MASK: Final = "***"


class RedisUrlError(ValueError):
    """A ``REDIS_URL`` we cannot open; the message says what is wrong with it."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages, logs and status)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hosts}"))


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a ``redis+cluster://`` URL, validated."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise RedisUrlError(
            f"not a cluster URL (want redis+cluster://host:port,...): {redact(url)!r}"
        )
    if parts.path not in ("", "/", "/0"):
        raise RedisUrlError(f"a Redis Cluster has only database 0, got {parts.path!r}")
    hosts = parts.netloc.rsplit("@", 1)[-1]
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise RedisUrlError(f"cluster node {item!r} is not host:port in {redact(url)!r}")
        nodes.append((host, int(port)))
    return nodes


def credentials(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``username``/``password`` client arguments from ``REDIS_PASSWORD`` and
    ``REDIS_USERNAME`` for a URL without a password of its own; ``{}`` otherwise.

    The URL wins because it is the more specific of the two, and the only one the
    original API's clients know. An empty variable counts as unset.
    """
    env = os.environ if env is None else env
    parts = urlsplit(url)
    password = env.get(PASSWORD_ENV, "")
    if parts.password is not None or not password:
        return {}
    found: dict[str, Any] = {"password": password}
    username = env.get(USERNAME_ENV, "")
    if username and not parts.username:
        found["username"] = username
    return found


def check_url(url: str) -> None:
    """Fail early, naming the setting, on what redis-py would only reject at the first
    command: a TLS file that cannot be read, TLS settings on a plain ``redis://`` URL."""
    parts = urlsplit(url)
    for name, value in parse_qsl(parts.query):
        if not name.startswith("ssl_"):
            continue
        if parts.scheme not in TLS_SCHEMES:
            raise RedisUrlError(
                f"{name} is a TLS setting: use a rediss:// URL, got {redact(url)!r}"
            )
        if name in TLS_FILE_PARAMS and not os.access(Path(value), os.R_OK):
            raise RedisUrlError(f"{name}={value}: no readable file there (REDIS_URL)")


def explain(exc: BaseException) -> str:
    """One line for a person. A refused password says where the password is set:
    redis-py's own text for a missing one is about ``HELLO``, which names neither."""
    if isinstance(exc, AuthenticationError):
        return (
            f"Redis refused the credentials; give its password in REDIS_URL or "
            f"{PASSWORD_ENV} ({exc})"
        )
    return str(exc)


def redis_from_url(url: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> AnyRedis:
    """Open ``url`` as a single-node client or a cluster client (see module docstring).

    ``kwargs`` are connection options both accept (timeouts, ``decode_responses``,
    ``health_check_interval``, ``retry``); the password comes from the URL or from
    ``REDIS_PASSWORD`` in ``env`` (the process environment by default)."""
    check_url(url)
    kwargs = {**credentials(url, env), **kwargs}
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

"""``python -m stream_runtime.probe``: exit 0 when Redis answers PING and a Kafka bootstrap
server accepts a TCP connection, else exit 1 naming what failed.

The stream processors serve no HTTP, so containers (compose healthcheck, Kubernetes exec
probe) use this as readiness: a consumer that cannot reach Redis or Kafka makes no
progress. It reads the same settings class as the processors, so it checks exactly the
endpoints they use; every check is bounded by a short timeout.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from redis.exceptions import RedisClusterException, RedisError

from stream_runtime.redis_client import RedisUrlError, explain, redact, redis_from_url
from stream_runtime.settings import StreamSettings, load_settings

TIMEOUT_S = 2.0


def _split_host_port(server: str) -> tuple[str, int]:
    host, _, port = server.strip().rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def check_kafka(bootstrap: str, timeout: float = TIMEOUT_S) -> str:
    """``ok`` when any bootstrap server accepts a connection, else the errors."""
    errors: list[str] = []
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        try:
            host, port = _split_host_port(server)
            with socket.create_connection((host, port), timeout=timeout):
                return "ok"
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {exc}")
    return "; ".join(errors) or "no bootstrap servers configured"


def check_redis(url: str, timeout: float = TIMEOUT_S) -> str:
    """``ok`` when Redis answers PING, else why not. The client is the processors' own
    kind (single node or cluster, password from the URL or ``REDIS_PASSWORD``)."""

    async def ping() -> str:
        client = redis_from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return "ok" if await client.ping() else "no PONG"
        except (RedisError, RedisClusterException) as exc:
            return explain(exc)
        finally:
            await client.aclose()

    try:
        return asyncio.run(ping())
    except RedisUrlError as exc:
        return str(exc)
    except ValueError as exc:  # redis-py's own URL checks
        return f"{exc} in {redact(url)!r}"


def main() -> int:
    settings = load_settings(StreamSettings)
    results = {
        "kafka": check_kafka(settings.kafka_bootstrap_servers),
        "redis": check_redis(settings.redis_url),
    }
    failed = {k: v for k, v in results.items() if v != "ok"}
    print("ready" if not failed else f"not ready: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

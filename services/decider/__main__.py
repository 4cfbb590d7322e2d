"""``python -m services.decider [--host H] [--port P] [--workers N] [--server S] [--auth A]``.

Runs the decider under granian (default) or uvicorn. Workers are separate processes on
purpose: the decision cache and RNGs are per process, and workers (like several hosts
behind a load balancer) share nothing but Redis and Kafka.

Why granian by default: on this product's hot path the HTTP server is the largest cost
left (parsing, the ASGI message dicts, the socket writes). granian does that work in
Rust and measured about twice uvicorn's decisions/s with the same app on the same core
(``docs/benchmarks.md``). uvicorn stays available (``--server uvicorn`` or
``MAB_HTTP_SERVER=uvicorn``), and ``uvicorn services.decider.app:app`` still works.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Literal

from services.decider.settings import DeciderSettings
from stream_runtime.kafka_connection import KafkaConnectionError
from stream_runtime.kafka_metadata import metadata_client
from stream_runtime.settings import load_settings

#: The import string both servers load in each worker (built from the environment).
TARGET = "services.decider.app:app"


def serve(
    server: Literal["granian", "uvicorn"], host: str, port: int, workers: int, log_level: str
) -> None:
    """Serve :data:`TARGET` until SIGINT/SIGTERM (lifespan shutdown flushes Kafka)."""
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            TARGET,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level.lower(),
            access_log=False,
        )
        return
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    Server(
        TARGET,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        log_level=LogLevels(log_level.lower()),
        log_access=False,
        respawn_failed_workers=True,
    ).serve()


def require_kafka(settings: DeciderSettings) -> None:
    """Exit 1 with one line naming the setting when Kafka refuses us (or never answers).

    Checked here, before the server starts, because a worker whose start-up fails is
    respawned by granian (``respawn_failed_workers``, there for crashes): a rejected
    password would otherwise be retried, and logged, forever. Each worker's own start
    (:meth:`~services.decider.producer.EventProducer.start`) checks again.
    """
    try:
        with metadata_client(settings.connection(), "decider-start"):
            pass
    except KafkaConnectionError as exc:
        print(f"cannot start the decider: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.decider")
    # Defaults come from the environment (DeciderSettings); an option given here wins.
    parser.add_argument("--host", help="bind address [env MAB_HOST, default 127.0.0.1]")
    parser.add_argument("--port", type=int, help="[env MAB_API_PORT, default 8000]")
    parser.add_argument("--workers", type=int, help="[env MAB_DECIDER_WORKERS, default 1]")
    parser.add_argument(
        "--server", choices=("granian", "uvicorn"), help="[env MAB_HTTP_SERVER, default granian]"
    )
    parser.add_argument(
        "--auth",
        choices=("keys", "open"),
        help="keys: admin calls need MAB_ADMIN_KEY; open: no key, loopback only "
        "[env MAB_AUTH, default keys]",
    )
    args = parser.parse_args(argv)
    given = {
        "api_host": args.host,
        "api_port": args.port,
        "workers": args.workers,
        "http_server": args.server,
        "auth": args.auth,
    }
    # Validated here, with the address we are about to bind: a bad env, a missing admin
    # key or an open decider on a public address fails before binding (exit 2).
    settings = load_settings(DeciderSettings, **{k: v for k, v in given.items() if v is not None})
    # Each worker builds its settings from the environment: give it what was chosen here,
    # so it validates the same bind address and auth mode.
    os.environ["MAB_HOST"] = settings.api_host
    os.environ["MAB_AUTH"] = settings.auth
    require_kafka(settings)
    serve(
        settings.http_server,
        settings.api_host,
        settings.api_port,
        settings.workers,
        settings.log_level,
    )


if __name__ == "__main__":
    main()

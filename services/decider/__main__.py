"""``python -m services.decider [--host H] [--port P]``: run the decider under uvicorn.

One worker per process on purpose: the decision cache and RNGs are per process; scale
out with more processes behind a load balancer (they share nothing but Redis and Kafka).
"""

from __future__ import annotations

import argparse

import uvicorn

from services.decider.settings import DeciderSettings


def main(argv: list[str] | None = None) -> None:
    settings = DeciderSettings()  # validated here: a bad env fails before binding
    parser = argparse.ArgumentParser(prog="python -m services.decider")
    parser.add_argument("--host", default=settings.api_host, help="env MAB_API_HOST")
    parser.add_argument("--port", type=int, default=settings.api_port, help="env MAB_API_PORT")
    args = parser.parse_args(argv)
    from services.decider.app import create_asgi

    uvicorn.run(
        create_asgi(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()

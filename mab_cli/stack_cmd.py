"""mab up / ``down`` / ``status`` / ``topics create`` / ``kafka-jars``: the local stack.

Thin I/O over :mod:`deploy.stack`; every failure is a :class:`StackError` printed as one
message with exit code 1.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import httpx
import typer

from deploy.stack.config import StackConfig
from deploy.stack.errors import StackError
from deploy.stack.jars import ensure_kafka_jars
from deploy.stack.local import LocalStack
from deploy.stack.scale import MAX_INSTANCES
from deploy.stack.secrets import API_KEY_ENV, AUTH_ENV, READ_KEY_FILE, read_secret
from deploy.stack.status import ComponentStatus
from deploy.stack.topics import create_topics, product_topic_specs
from mab_cli.log_options import kafka_connection
from mab_client import MabClient, MabError, RetryPolicy

#: Experiments whose SRM state ``mab status`` lists (the first, in creation order).
STATUS_EXPERIMENTS = 50

T = TypeVar("T")

topics_app = typer.Typer(help="Kafka topics of the product.", no_args_is_help=True)


def _guard(action: Callable[[], T]) -> T:
    """Run ``action``; a StackError becomes one red line on stderr and exit code 1."""
    try:
        return action()
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _table(rows: Sequence[ComponentStatus]) -> str:
    header = ("component", "pid", "port", "running", "healthy", "url / note")
    body = [
        (
            r.name,
            str(r.pid or "-"),
            str(r.port or "-"),
            "yes" if r.running else "no",
            "yes" if r.healthy else "no",
            r.url or r.note or "",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    )


def srm_table(url: str, api_key: str | None, transport: httpx.BaseTransport | None = None) -> str:
    """Per experiment: assignment mode, unique units and the SRM state, read from the
    decider through the SDK (``/stats``); one line naming the problem when it fails.
    An SRM alarm means units did not get the arms their allocations promised: the
    experiment's results should not be trusted until the cause is found."""
    header = ("experiment", "assignment", "units", "srm")
    body: list[tuple[str, str, str, str]] = []
    try:
        with MabClient(
            url,
            api_key=api_key,
            timeout=5.0,
            retry=RetryPolicy(max_attempts=1),
            transport=transport,
        ) as c:
            experiments = c.list_experiments(limit=STATUS_EXPERIMENTS + 1)
            for exp in experiments[:STATUS_EXPERIMENTS]:
                stats = c.stats(exp.experiment_id)
                units = sum(a.units for a in stats.arms)
                srm = stats.srm
                if srm is None:
                    state = "-"
                elif srm.p_value is None:
                    state = f"n/a ({srm.reason})"
                else:
                    state = f"{'ALARM' if srm.alarm else 'ok'} p={srm.p_value:.3g} ({srm.method})"
                body.append((exp.experiment_id, stats.assignment or "-", f"{units:,}", state))
    except MabError as exc:
        return f"experiments: not read from {url}: {exc}"
    if not body:
        return "experiments: none"
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    if len(experiments) > STATUS_EXPERIMENTS:
        lines.append(f"(the first {STATUS_EXPERIMENTS} experiments)")
    return "\n".join(lines)


def _failed(rows: Sequence[ComponentStatus], expected: Sequence[str]) -> list[str]:
    """Components that run or should run (``expected``) but are not healthy.

    Services that were not requested (``--no-services``) and do not run are not failures.
    """
    wanted = set(expected)
    return [r.name for r in rows if (r.running or r.name in wanted) and not r.healthy]


def _count_option(env: str, what: str) -> Any:
    return typer.Option(
        min=1,
        max=MAX_INSTANCES,
        envvar=env,
        help=f"{what} [default: as at the last mab up, else 1].",
        show_default=False,
    )


def up(
    services: Annotated[
        bool, typer.Option("--services/--no-services", help="Also start the product services.")
    ] = True,
    consumers: Annotated[
        int | None, _count_option("MAB_CONSUMERS", "Reward consumer processes (one group)")
    ] = None,
    projectors: Annotated[
        int | None, _count_option("MAB_PROJECTORS", "Projector processes (one group)")
    ] = None,
    decider_workers: Annotated[
        int | None, _count_option("MAB_DECIDER_WORKERS", "Decider uvicorn workers (one port)")
    ] = None,
    open_auth: Annotated[
        bool,
        typer.Option(
            "--open",
            help="Serve admin calls without a key, like the original mab-ecommerce-optimizer "
            "API (MAB_AUTH=open; the decider stays on 127.0.0.1). Default: the admin key.",
        ),
    ] = False,
) -> None:
    """Start every missing piece: Redis, Kafka, topics, then each registered service.

    Idempotent: running instances are kept; a different count scales up or down, and a
    different auth mode restarts the decider. ``MAB_AUTH=open`` in the environment is the
    same as ``--open``.
    """
    started = time.monotonic()
    wanted = {
        name: n
        for name, n in (
            ("reward-consumer", consumers),
            ("projector", projectors),
            ("decider", decider_workers),
        )
        if n is not None
    }
    open_auth = open_auth or os.environ.get(AUTH_ENV, "").strip().lower() == "open"
    stack = _guard(lambda: LocalStack(StackConfig.product(), scale=wanted, open_auth=open_auth))
    rows = _guard(lambda: stack.up(with_services=services, note=typer.echo))
    typer.echo("")
    typer.echo(_table(rows))
    typer.echo(f"\nup in {time.monotonic() - started:.1f}s; logs in {stack.config.run_dir}/logs")
    failed = _failed(rows, stack.expected(with_services=services))
    if failed:
        typer.secho(f"error: not healthy: {', '.join(failed)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def down() -> None:
    """Stop exactly what mab up started (services first, then Kafka and Redis)."""
    stack = LocalStack(StackConfig.product())
    stopped = _guard(stack.down)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each component: pid, port, running, healthy; then, with a healthy decider, each
    experiment's assignment mode, unique units and SRM state. Exit 1 if a running
    component is unhealthy (an SRM alarm is shown, not an exit code)."""
    stack = _guard(lambda: LocalStack(StackConfig.product()))
    rows = _guard(stack.status)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        typer.echo(_table(rows))
        decider = next((r for r in rows if r.name == "decider" and r.healthy and r.url), None)
        if decider is not None and decider.url is not None:
            key = read_secret(stack.config.run_dir, READ_KEY_FILE, API_KEY_ENV)
            typer.echo("")
            typer.echo(srm_table(decider.url, None if key is None else key.value))
    if any(r.running and not r.healthy for r in rows):
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create(
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]."),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Topic name prefix [env MAB_TOPIC_PREFIX].")
    ] = None,
) -> None:
    """Create the product's topics idempotently (also the docker-compose init job)."""
    config = StackConfig.product()
    kafka = kafka_connection(bootstrap)
    chosen_prefix = config.topic_prefix if prefix is None else prefix
    counts = _guard(lambda: create_topics(kafka, product_topic_specs(chosen_prefix), 60.0))
    for name, partitions in counts.items():
        typer.echo(f"{name}\t{partitions} partitions")


def kafka_jars() -> None:
    """Resolve the Kafka jars from Maven Central into .cache (once; later runs are offline)."""
    typer.echo(str(_guard(ensure_kafka_jars)))


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command("kafka-jars")(kafka_jars)
    app.add_typer(topics_app, name="topics")

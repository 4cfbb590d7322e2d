"""Options shared by the commands that read the event log (``mab audit``, ``mab evaluate``),
and the errors, ``--params`` and progress bar every command reports the same way.

Not a ``*_cmd`` module: it registers nothing. Defaults follow ``mab up``: the bootstrap
servers from ``KAFKA_BOOTSTRAP_SERVERS``, else the local stack's Kafka port
(``MAB_KAFKA_PORT``, 9092); the topic prefix from ``MAB_TOPIC_PREFIX``. TLS and SASL come
from the same ``KAFKA_*`` variables as the services' (:func:`kafka_connection`, which
every command that talks to Kafka uses).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from deploy.stack.errors import StackError
from deploy.stack.ports import Ports
from offpolicy.log import ExperimentLog
from offpolicy.reader import LogTooLargeError, LogUnavailableError, read_experiment_log
from schemas.ids import InvalidIdError, normalize_id
from schemas.topics import TopicNames
from stream_runtime.kafka_connection import KafkaConnection
from stream_runtime.settings import ServiceSettings, settings_errors


def experiment_id(value: str) -> str:
    """``--experiment`` trimmed and checked like the API's ids (usage error when invalid)."""
    try:
        return normalize_id(value, "--experiment")
    except InvalidIdError as exc:
        raise typer.BadParameter(str(exc)) from None


ExperimentOpt = Annotated[
    str,
    typer.Option(
        "--experiment", help="Experiment id (as the API spells it).", callback=experiment_id
    ),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)."),
]
PrefixOpt = Annotated[
    str | None, typer.Option("--topic-prefix", help="Topic name prefix (env MAB_TOPIC_PREFIX).")
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=1.0, help="Give up when Kafka is silent this many seconds."),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """One red line on stderr; the caller raises the returned exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def parse_params(raw: str | None) -> dict[str, Any]:
    """``--params``: strategy params as a JSON object (none given: ``{}``); exit 2 when
    it is not one. Their rules are checked by the strategy's params model afterwards."""
    if raw is None:
        return {}
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise fail(f"--params is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise fail("--params must be a JSON object")
    return obj


def cli_settings(bootstrap: str | None) -> ServiceSettings:
    """The settings a command shares with the services (the Kafka connection, the topic
    and key prefixes, ``REDIS_URL``): Kafka at ``--bootstrap``, else
    ``KAFKA_BOOTSTRAP_SERVERS``, else the local stack's Kafka port; TLS and SASL from the
    ``KAFKA_*`` variables. Exit 2 with one line per invalid variable (naming it)."""
    servers = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        try:
            servers = f"127.0.0.1:{Ports.from_env().kafka}"
        except StackError as exc:
            raise fail(str(exc)) from None
    try:
        return ServiceSettings(kafka_bootstrap_servers=servers)
    except ValidationError as exc:
        raise fail("; ".join(settings_errors(exc, ServiceSettings))) from None


def kafka_connection(bootstrap: str | None) -> KafkaConnection:
    """How a command connects to Kafka (see :func:`cli_settings`)."""
    return cli_settings(bootstrap)


def resolve(bootstrap: str | None, prefix: str | None) -> tuple[KafkaConnection, TopicNames]:
    """Kafka connection and topic names, ``--prefix`` over ``MAB_TOPIC_PREFIX`` (exit 2
    when a setting is invalid or the stack's ports are unreadable)."""
    settings = cli_settings(bootstrap)
    return settings, settings.topics if prefix is None else TopicNames.with_prefix(prefix)


def progress_bar(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def read_log(
    kafka: KafkaConnection,
    topics: TopicNames,
    experiment: str,
    bar: Progress,
    timeout_s: float,
) -> ExperimentLog:
    """Read the experiment's log with a "reading log" task on ``bar`` (exit 1 on failure)."""
    task = bar.add_task("reading log", total=None)

    def on_total(n: int) -> None:
        bar.update(task, total=n)

    def on_records(n: int) -> None:
        bar.advance(task, n)

    try:
        log = asyncio.run(
            read_experiment_log(
                kafka,
                topics,
                experiment,
                on_total=on_total,
                on_records=on_records,
                timeout_s=timeout_s,
            )
        )
    except (LogUnavailableError, LogTooLargeError) as exc:
        raise fail(str(exc), 1) from None
    return log


def advancer(bar: Progress, description: str, total: int) -> Callable[[int], None]:
    task = bar.add_task(description, total=total)

    def advance(n: int) -> None:
        bar.advance(task, n)

    return advance

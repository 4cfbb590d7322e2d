"""``mab replay``: rebuild state from the topics with the consumers' own fold and writes.

* ``mab replay`` replays into a scratch namespace, prints what it folded, and removes it;
* ``mab replay --verify`` compares that rebuild with the live keys (exit 0 only when
  identical, 1 with the differences printed);
* ``mab replay --rebuild`` makes the rebuild live (after Redis was lost or corrupted);
* ``--from-timestamp T`` starts at the first record at or after ``T`` (broker time).
  With ``--rebuild`` the records from ``T`` on are applied *on top of* the live state by
  the consumers' batch handlers, whose stored-offset check skips what the state already
  holds: the way to catch up a Redis restored from a backup taken after ``T``. Without
  it, the scratch state holds only the records from ``T`` (a partial view; it cannot be
  compared with live state, so ``--verify`` refuses it).

Both ``--rebuild`` modes refuse (exit 3, nothing written) while the reward consumer or
the projector runs (:mod:`mab_cli.replay_guard` says why); ``--force`` overrides that.
A Redis Cluster (``REDIS_URL=redis+cluster://...``) works like a single node: every key
of an experiment, scratch ones included, lies in its ``{experiment}`` slot.

The replay driver is the engine's (:mod:`stream_runtime.replay`), with the services'
processors from their packages' public entry points; reading, comparing and swapping
namespaces is :mod:`mab_cli.replay_redis`. Bad input (unreachable broker, unparsable
timestamp) is one red line and exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Annotated

import typer
from confluent_kafka import KafkaException
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mab_cli.replay_guard import (
    EXIT_PROCESSORS_RUNNING,
    ProcessorGroups,
    ProcessorsRunning,
)
from mab_cli.replay_runs import (
    Outcome,
    ReplayTarget,
    run_dry,
    run_rebuild,
    run_tail,
    run_verify,
)
from services.projector import ProjectorSettings
from stream_runtime.kafka_connection import KafkaConnectionError
from stream_runtime.redis_client import RedisUrlError, explain
from stream_runtime.settings import settings_errors

log = logging.getLogger("mab_cli.replay")


def parse_timestamp(value: str) -> float:
    """Unix seconds, or an ISO 8601 time (a time without zone is UTC)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither unix seconds nor ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        verify: Annotated[
            bool, typer.Option("--verify", help="Compare a rebuild with the live state.")
        ] = False,
        rebuild: Annotated[
            bool, typer.Option("--rebuild", help="Restore the live state from the topics.")
        ] = False,
        from_timestamp: Annotated[
            str | None,
            typer.Option(help="Start at this time (unix seconds or ISO 8601, UTC)."),
        ] = None,
        workers: Annotated[int, typer.Option(min=1, max=64, help="Parallel processes.")] = 2,
        force: Annotated[
            bool,
            typer.Option(
                "--force",
                help="Rebuild although consumers of the topics run (see docs/operations.md).",
            ),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Replay the topics with the consumers' fold (env: KAFKA_BOOTSTRAP_SERVERS,
        REDIS_URL, MAB_TOPIC_PREFIX, MAB_REDIS_PREFIX, MAB_PROJECTOR_RETENTION_DAYS,
        MAB_CONSUMER_GROUP_ID, MAB_PROJECTOR_GROUP_ID).

        --rebuild refuses with exit code 3 while the reward consumer or the projector
        runs; stop them first."""
        if verify and rebuild:
            raise _fail("--verify and --rebuild exclude each other")
        if force and not rebuild:
            raise _fail("--force only applies to --rebuild")
        from_ts = None if from_timestamp is None else parse_timestamp(from_timestamp)
        if verify and from_ts is not None:
            raise _fail("--verify compares a full replay; it cannot start at a timestamp")
        try:
            settings = ProjectorSettings()
        except ValidationError as exc:
            raise _fail("; ".join(settings_errors(exc, ProjectorSettings))) from None
        groups = ProcessorGroups.from_env()
        try:
            target = ReplayTarget.of(settings, workers, groups)
        except ValueError as exc:  # a key prefix with braces would move every hash tag
            raise _fail(str(exc)) from None

        def progress(message: str) -> None:
            typer.echo(f"replay: {message}", err=True)

        try:
            if verify:
                outcome = asyncio.run(run_verify(target, progress))
            elif rebuild and from_ts is not None:
                outcome = asyncio.run(run_tail(target, progress, from_ts, force=force))
            elif rebuild:
                outcome = asyncio.run(run_rebuild(target, progress, force=force))
            else:
                outcome = asyncio.run(run_dry(target, progress, from_ts))
        except ProcessorsRunning as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(EXIT_PROCESSORS_RUNNING) from None
        except (RedisUrlError, KafkaConnectionError) as exc:
            raise _fail(str(exc)) from None
        except (
            OSError,
            ConnectionError,
            RedisConnectionError,
            RedisTimeoutError,
            KafkaException,
        ) as exc:
            raise _fail(f"cannot reach Kafka or Redis: {explain(exc)}") from None
        _print(outcome, as_json)
        if verify and outcome.differences:
            raise typer.Exit(1)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _print(outcome: Outcome, as_json: bool) -> None:
    data = outcome.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(
        f"{data['records']:,} records ({data['folded']:,} folded, {data['projected']:,} "
        f"projected) of {data['experiments']} experiments in {data['seconds']} s "
        f"({data['records_per_s'] or 0:,} records/s)"
    )
    if data["rejected"]:
        typer.echo(f"rejected: {data['rejected']}")
    if data["sticky_units"]:
        typer.echo(f"sticky units: {data['sticky_units']}")
    for note in outcome.notes:
        typer.echo(note)
    if outcome.differences:
        typer.secho(f"{len(outcome.differences)} differences:", fg=typer.colors.RED)
        for line in outcome.differences:
            typer.echo(f"  {line}")
    elif outcome.verified:
        typer.echo("identical")

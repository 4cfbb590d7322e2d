"""``mab dlq count | list | export | redrive``: inspect and re-drive the dead-letter topic.

The DLQ is an append-only log, and the reward consumer may dead-letter a record twice
(a batch redelivered after a crash between the dead-letter write and the Kafka commit).
Every command therefore works on the DLQ's *open records*: one entry per origin (the
record's first position ``topic:partition:offset``), the latest one winning, so
duplicates count once, and a re-driven record disappears until it is rejected again
(see :func:`schemas.dead_letter.dedupe`). ``--include-redriven`` shows re-driven ones too.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from confluent_kafka import KafkaException

from deploy.stack.config import StackConfig
from mab_cli.log_options import kafka_connection
from schemas.dead_letter import DeadLetter, dedupe, position_id, redriven_origins
from schemas.rejections import Rejection
from schemas.topics import TopicNames
from stream_runtime.acked_producer import ProduceError
from stream_runtime.dead_letter import DeadLetterError, Redrive, read_dead_letters, redrive
from stream_runtime.kafka_connection import KafkaConnectionError
from stream_runtime.partition_reader import PartitionReadError

dlq_app = typer.Typer(
    help="The dead-letter topic: count, list, export and re-drive rejected records.",
    no_args_is_help=True,
)

Bootstrap = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS].")
]
Prefix = Annotated[str | None, typer.Option(help="Topic name prefix [env MAB_TOPIC_PREFIX].")]
Reason = Annotated[str | None, typer.Option(help="Only records rejected for this reason.")]
IncludeRedriven = Annotated[
    bool, typer.Option("--include-redriven", help="Also records already re-driven.")
]


def _topics(prefix: str | None) -> TopicNames:
    return TopicNames.with_prefix(StackConfig.product().topic_prefix if prefix is None else prefix)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _load(bootstrap: str | None, prefix: str | None) -> tuple[list[DeadLetter], TopicNames]:
    names = _topics(prefix)
    kafka = kafka_connection(bootstrap)
    try:
        return asyncio.run(read_dead_letters(kafka, names.rewards_dlq)), names
    except (DeadLetterError, KafkaConnectionError) as exc:
        raise _fail(str(exc)) from None
    except (KafkaException, PartitionReadError) as exc:
        raise _fail(f"kafka at {kafka.describe()}: {exc}") from None


def _current(
    letters: list[DeadLetter], reason: str | None, include_redriven: bool
) -> list[DeadLetter]:
    """One dead letter per origin: the open ones (plus re-driven ones if asked)."""
    closed = set() if include_redriven else redriven_origins(letters)
    return [
        d
        for d in dedupe(letters)
        if d.origin not in closed and (reason is None or d.reason == reason)
    ]


def letter_row(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as one JSON object (``list --json`` and ``export``).

    ``value`` is the original record as text when it is UTF-8, else ``value_base64``.
    """
    row: dict[str, Any] = {
        "origin": position_id(*d.origin),
        "reason": d.reason,
        "detail": d.detail,
        "source_topic": d.source_topic,
        "source_partition": d.source_partition,
        "source_offset": d.source_offset,
        "source_timestamp": d.source_timestamp,
        "rejected_by": d.rejected_by,
        "rejected_at_ms": d.rejected_at_ms,
        "dlq_offset": d.dlq_offset,
        "key": d.key.decode("utf-8", "replace") if d.key is not None else None,
        "value": None,
    }
    if d.value is not None:
        try:
            row["value"] = d.value.decode("utf-8")
        except UnicodeDecodeError:
            row["value_base64"] = base64.b64encode(d.value).decode()
    return row


def count(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Rejected records by reason, each counted once per source position."""
    letters, _ = _load(bootstrap, prefix)
    closed = redriven_origins(letters)
    by_reason = Counter(d.reason for d in dedupe(letters) if d.origin not in closed)
    redriven = len(closed)
    if as_json:
        body = {
            "by_reason": dict(sorted(by_reason.items())),
            "open": sum(by_reason.values()),
            "redriven": redriven,
            "dlq_records": len(letters),
        }
        typer.echo(json.dumps(body, indent=2))
        return
    for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"{n:>8}  {reason:<22} {Rejection.text_of(reason)}")
    typer.echo(
        f"{sum(by_reason.values()):>8}  open (one per source position; {redriven} re-driven, "
        f"{len(letters)} DLQ records incl. duplicates and markers)"
    )


def list_(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    reason: Reason = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    include_redriven: IncludeRedriven = False,
) -> None:
    """Rejected records (oldest first) with origin, reason, detail and the value."""
    letters, _ = _load(bootstrap, prefix)
    for d in _current(letters, reason, include_redriven)[:limit]:
        row = letter_row(d)
        if as_json:
            typer.echo(orjson.dumps(row).decode())
            continue
        value = row["value"] if row["value"] is not None else row.get("value_base64", "")
        shown = value if len(value) <= 120 else value[:117] + "..."
        typer.echo(f"{row['origin']}  {d.reason}  {d.detail}\n    {shown}")


def export(
    out: Annotated[Path, typer.Option("--out", help="JSON Lines file to write.")],
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    reason: Reason = None,
    include_redriven: IncludeRedriven = False,
) -> None:
    """Write the rejected records as JSON Lines (fix ``value`` and re-drive with --from)."""
    letters, _ = _load(bootstrap, prefix)
    rows = [letter_row(d) for d in _current(letters, reason, include_redriven)]
    with out.open("wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")
    typer.echo(f"{len(rows)} records written to {out}")


def _fixed(line_no: int, row: Any) -> Redrive:
    """One line of a ``--from`` file: its origin and the fixed record."""
    if not isinstance(row, dict):
        raise DeadLetterError(f"line {line_no}: expected a JSON object")
    try:
        topic, partition, offset = str(row["origin"]).rsplit(":", 2)
        origin = (topic, int(partition), int(offset))
    except (KeyError, ValueError):
        raise DeadLetterError(
            f"line {line_no}: needs an 'origin' (topic:partition:offset)"
        ) from None
    value = row.get("value")
    if isinstance(value, dict):
        raw = orjson.dumps(value)
    elif isinstance(value, str):
        raw = value.encode()
    elif isinstance(row.get("value_base64"), str):
        raw = base64.b64decode(row["value_base64"])
    else:
        raise DeadLetterError(f"line {line_no}: needs a 'value' (JSON text or object)")
    key = row.get("key")
    return Redrive(origin, raw, key.encode() if isinstance(key, str) else None)


def _read_fixed(path: Path) -> list[Redrive]:
    items = []
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(_fixed(n, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise DeadLetterError(f"line {n}: not JSON ({exc})") from None
    return items


def redrive_cmd(
    from_file: Annotated[
        Path | None, typer.Option("--from", help="JSON Lines of fixed records (from export).")
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Re-drive the original bytes of every record with this reason."),
    ] = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    include_redriven: IncludeRedriven = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
) -> None:
    """Put records back on their source topic once their cause is fixed.

    ``--reason R`` re-produces the original bytes (e.g. rewards for an experiment that
    was created later); ``--from FILE`` re-produces the records of an edited export.
    Records keep their identity (event id, or the original position for minimal
    records), so re-driving twice applies them once.
    """
    if (from_file is None) == (reason is None):
        raise _fail("give exactly one of --from FILE or --reason R")
    names = _topics(prefix)
    try:
        if from_file is not None:
            items = _read_fixed(from_file)
        else:
            letters, _ = _load(bootstrap, prefix)
            items = [
                Redrive(d.origin, d.value, d.key)
                for d in _current(letters, reason, include_redriven)
                if d.value is not None
            ]
        if dry_run:
            for item in items:
                typer.echo(f"would re-drive {position_id(*item.origin)}")
            typer.echo(f"{len(items)} records")
            return
        allowed = {names.rewards, names.decisions}
        kafka = kafka_connection(bootstrap)
        sent = asyncio.run(redrive(kafka, names.rewards_dlq, allowed, items))
    except (DeadLetterError, KafkaConnectionError) as exc:
        raise _fail(str(exc)) from None
    except (ProduceError, KafkaException) as exc:
        raise _fail(f"re-drive failed ({exc!r}); re-run with --include-redriven") from None
    typer.echo(f"{sent} records re-driven")


def register(app: typer.Typer) -> None:
    dlq_app.command()(count)
    dlq_app.command("list")(list_)
    dlq_app.command()(export)
    dlq_app.command("redrive")(redrive_cmd)
    app.add_typer(dlq_app, name="dlq")

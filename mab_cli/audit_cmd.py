"""``mab audit export``: every decision of an experiment joined with its rewards, to a file.

Thin I/O over :mod:`offpolicy`: read the experiment's partitions from the beginning to the
end offsets at start (:mod:`offpolicy.reader`), fold them in event-time order to learn
which rewards counted, join by decision id (:func:`offpolicy.log.join`, the row kinds are
documented there) and write CSV or Parquet (:mod:`offpolicy.export`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mab_cli.log_options import (
    BootstrapOpt,
    ExperimentOpt,
    PrefixOpt,
    TimeoutOpt,
    advancer,
    fail,
    progress_bar,
    read_log,
    resolve,
)
from offpolicy.export import ExportError, export_format, write_rows
from offpolicy.log import join
from offpolicy.timeline import fold_timeline

audit_app = typer.Typer(help="Audit an experiment's event log.", no_args_is_help=True)


@audit_app.command("export")
def export_command(
    experiment: ExperimentOpt,
    out: Annotated[Path, typer.Option("--out", help="Output file: .csv or .parquet.")],
    bootstrap: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    timeout: TimeoutOpt = 30.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Export every decision joined with its rewards (plus unlinked and orphan rewards)."""
    kafka, topics = resolve(bootstrap, topic_prefix)
    try:
        export_format(out)
    except ExportError as exc:
        raise fail(str(exc)) from None
    console = Console(stderr=True)
    with progress_bar(console, quiet) as bar:
        log = read_log(kafka, topics, experiment, bar, timeout)
        outcomes = fold_timeline(log).outcomes
        joined = join(log, outcomes)
        try:
            fmt = write_rows(out, joined.rows, advancer(bar, "writing rows", len(joined.rows)))
        except (ExportError, OSError) as exc:
            raise fail(f"cannot write {out}: {exc}", 1) from None
    summary = {
        "experiment_id": experiment,
        "out": str(out),
        "format": fmt,
        "rows": len(joined.rows),
        "decisions": len(log.decisions),
        "rewards": len(log.rewards),
        "rewards_unlinked": joined.unlinked,
        "rewards_orphan": joined.orphans,
        "records_rejected": len(log.rejected),
    }
    typer.echo(json.dumps(summary))
    if log.rejected:
        typer.secho(
            f"warning: {len(log.rejected)} undecodable records skipped (first: {log.rejected[0]})",
            fg=typer.colors.YELLOW,
            err=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")

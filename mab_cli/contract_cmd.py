"""``mab contract [--check]``: regenerate (or verify) the published topic contract."""

from __future__ import annotations

from typing import Annotated

import typer

from mab_cli.producer_contract import CONTRACT_DIR, CONTRACT_VERSION, stale, write


def contract(
    check: Annotated[
        bool, typer.Option("--check", help="Only verify; exit 1 if the files are stale.")
    ] = False,
) -> None:
    """Write the JSON Schema and AsyncAPI documents generated from schemas/events.py."""
    if check:
        outdated = stale()
        if outdated:
            typer.secho(
                f"error: stale contract files in {CONTRACT_DIR}: {', '.join(outdated)} "
                "(run `mab contract`)",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(f"contract v{CONTRACT_VERSION} up to date in {CONTRACT_DIR}")
        return
    for path in write():
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command()(contract)

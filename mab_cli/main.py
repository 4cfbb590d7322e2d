"""The ``mab`` command line.

Commands live in ``mab_cli/*_cmd.py`` modules, each exposing ``register(app: typer.Typer)``;
they are discovered here so engineers add commands without editing (and conflicting on) this
file. A module that fails to import is a bug and fails loudly.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

import typer

from deploy.stack.errors import StackError
from deploy.stack.redis_server import default_redis_url

app = typer.Typer(
    name="mab",
    help="MAB e-commerce optimizer: run the local stack, simulate, replay.",
    no_args_is_help=True,
    add_completion=False,
)


def _register_commands(target: typer.Typer) -> None:
    """Import every ``mab_cli.*_cmd`` module in name order and let it add its commands."""
    package_dir = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(package_dir)]), key=lambda m: m.name):
        if not info.name.endswith("_cmd"):
            continue
        module = importlib.import_module(f"mab_cli.{info.name}")
        register = getattr(module, "register", None)
        if not callable(register):
            raise RuntimeError(f"mab_cli.{info.name} has no register(app) function")
        register(target)


@app.callback()
def _local_stack_defaults() -> None:
    # Before every command: without REDIS_URL, commands that read Redis (replay) use
    # the local stack's, with the password `mab up` stored, as services of that stack do.
    try:
        url = default_redis_url()
    except StackError:  # a bad MAB_*_PORT, an emptied password file: `mab up` says which
        return
    if url is not None:
        os.environ["REDIS_URL"] = url


_register_commands(app)


if __name__ == "__main__":
    app()

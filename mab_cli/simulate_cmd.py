"""``mab simulate``: benchmark strategies on a scenario file (see ``scenarios/``).

Thin I/O over :mod:`bandit_core.simulate`: every bad input (scenario, strategy, params)
is one red line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    Progress,
    TaskID,
)
from rich.table import Table

from bandit_core.simulate import (
    ScenarioError,
    StrategyResult,
    load_scenario,
    simulate,
    strategy_names,
)
from bandit_core.strategies import InvalidParamsError, UnknownStrategyError
from mab_cli.log_options import fail, parse_params, progress_bar


def _advancer(bar: Progress, task: TaskID) -> Callable[[int], None]:
    def advance(n: int) -> None:
        bar.advance(task, n)

    return advance


def simulate_command(
    scenario: Annotated[Path, typer.Option("--scenario", help="Scenario JSON file.")],
    strategy: Annotated[str, typer.Option("--strategy", help="Strategy name or 'all'.")],
    params: Annotated[
        str | None, typer.Option("--params", help="Strategy params as a JSON object.")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Independent runs.")] = 40,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Base seed.")] = 42,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes (default: CPU count).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per strategy.")] = False,
) -> None:
    """Run strategies on a scenario; report cumulative expected regret vs the best arm."""
    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    names = strategy_names(sc) if strategy.strip().lower() == "all" else [strategy]
    given = parse_params(params)
    if strategy.strip().lower() == "all" and given:
        raise fail("--params cannot be combined with --strategy all")
    n_workers = workers or min(os.cpu_count() or 1, runs)
    console = Console(stderr=True)
    results: list[StrategyResult] = []
    with progress_bar(console, as_json) as bar:
        for name in names:
            task = bar.add_task(name, total=runs)
            try:
                res = simulate(
                    sc,
                    name,
                    given,
                    runs=runs,
                    seed=seed,
                    workers=n_workers,
                    progress=_advancer(bar, task),
                )
            except (UnknownStrategyError, InvalidParamsError) as exc:
                raise fail(str(exc)) from None
            results.append(res)
            if as_json:
                typer.echo(json.dumps(res.to_dict()))
    if not as_json:
        table = Table(title=f"{sc.name}: {runs} runs, horizon {sc.horizon}, seed {seed}")
        for col in ("strategy", "params", "regret mean ± std", "reward mean", "best arm, last 10%"):
            table.add_column(col)
        for r in sorted(results, key=lambda r: r.regret_mean):
            table.add_row(
                r.strategy,
                json.dumps(r.params) if r.params else "defaults",
                f"{r.regret_mean:.2f} ± {r.regret_std:.2f}",
                f"{r.reward_mean:.1f}",
                f"{r.best_arm_share_last_10pct:.1%}",
            )
        Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)

"""``mab evaluate``: off-policy evaluation of a strategy on an experiment's logged decisions.

Thin I/O over :mod:`offpolicy`: read the log (:mod:`offpolicy.reader`), evaluate
(:func:`offpolicy.evaluate.evaluate_log`), print a table or JSON. Method and assumptions:
docs/off-policy-evaluation.md.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bandit_core.strategies import InvalidParamsError, UnknownStrategyError, validate_params
from mab_cli.log_options import (
    BootstrapOpt,
    ExperimentOpt,
    PrefixOpt,
    TimeoutOpt,
    fail,
    parse_params,
    progress_bar,
    read_log,
    resolve,
)
from offpolicy.evaluate import (
    MISSING_REWARD_CHOICES,
    EvaluationOptions,
    EvaluationReport,
    MissingReward,
    evaluate_log,
)


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def render(report: EvaluationReport, console: Console) -> None:
    """The human-readable report: estimates with CIs, support per arm, warnings."""
    res = report.result
    params = json.dumps(report.strategy_params) if report.strategy_params else "defaults"
    table = Table(
        title=f"{report.experiment_id}: {report.strategy} ({params}) on "
        f"{res.n:,} logged decisions, {res.confidence:.0%} CI"
    )
    for col in ("estimator", "value", "CI low", "CI high", "std err"):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    labels = {"ips": "IPS", "snips": "SNIPS", "dr": "DR", "logged": "logging policy (observed)"}
    for e in [*res.estimates, res.logged]:
        table.add_row(
            labels.get(e.estimator, e.estimator),
            _num(e.value),
            _num(e.ci_low),
            _num(e.ci_high),
            _num(e.std_error),
        )
    console.print(table)
    console.print(
        f"effective sample size {res.ess:,.1f} of {res.n:,} · max weight "
        f"{_num(res.weight_max, '.2f')} · mean weight {_num(res.weight_mean, '.3f')} · "
        f"{report.decisions_without_reward:,} decisions without reward "
        f"(missing_reward={report.missing_reward})"
    )
    arms = Table(title="support per arm")
    for col in ("arm", "served", "served share", "target share", "mean reward"):
        arms.add_column(col, justify="left" if col == "arm" else "right")
    for s in res.arms:
        arms.add_row(
            s.arm_id,
            f"{s.logged_decisions:,}",
            f"{s.logged_share:.1%}",
            f"{s.target_share:.1%}",
            _num(s.mean_reward),
        )
    console.print(arms)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def evaluate_command(
    experiment: ExperimentOpt,
    strategy: Annotated[str, typer.Option("--strategy", help="Target strategy name.")],
    params: Annotated[
        str | None, typer.Option("--params", help="Target params as a JSON object.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    missing_reward: Annotated[
        str,
        typer.Option(
            "--missing-reward",
            help="Decisions without a reward: 'drop' them or count them as 'zero'.",
        ),
    ] = "drop",
    max_decisions: Annotated[
        int | None,
        typer.Option("--max-decisions", min=1, help="Evaluate only the most recent N."),
    ] = None,
    confidence: Annotated[
        float, typer.Option("--confidence", min=0.5, max=0.999, help="CI level.")
    ] = 0.95,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of Monte Carlo target propensities.")
    ] = 0,
    samples: Annotated[
        int,
        typer.Option("--samples", min=1, max=100_000, help="Monte Carlo draws (Thompson)."),
    ] = 1000,
    bootstrap: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Estimate what STRATEGY would have earned on the logged decisions (IPS, SNIPS, DR)."""
    kafka, topics = resolve(bootstrap, topic_prefix)
    given = parse_params(params)
    try:
        clean = validate_params(strategy, given)
    except (UnknownStrategyError, InvalidParamsError) as exc:
        raise fail(str(exc)) from None
    if missing_reward not in MISSING_REWARD_CHOICES:
        raise fail(f"--missing-reward must be one of {', '.join(MISSING_REWARD_CHOICES)}")
    mode: MissingReward = "zero" if missing_reward == "zero" else "drop"
    options = EvaluationOptions(
        max_decisions=max_decisions,
        missing_reward=mode,
        confidence=confidence,
        seed=seed,
        samples=samples,
    )
    console = Console(stderr=True)
    with progress_bar(console, as_json) as bar:
        log = read_log(kafka, topics, experiment, bar, timeout)
        if not log.decisions and not log.config_events:
            raise fail(f"experiment {experiment!r} has no events in {topics.decisions}", 1)
        task = bar.add_task("evaluating", total=None)
        report = evaluate_log(log, strategy, clean, options)
        bar.update(task, total=1, completed=1)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        render(report, Console())


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)

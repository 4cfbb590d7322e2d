"""``mab report``: an experiment's decision summary, for the people who decide.

Read through the SDK from ``GET /experiments/{id}/stats``: the winner the stopping rule
declared (or "not yet"), each arm's P(best) and expected loss, the bandit's uplift over
the holdout with its anytime-valid interval, and the guardrails' status when the stats
carry one. The guardrail field is read defensively (any shape, or none): a decider
without guardrails answers without it, and the report says so instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from deploy.stack.config import StackConfig
from mab_client import MabClient, MabError, RetryPolicy
from mab_client.models import StatsPublic

#: The decider of the local stack (``mab up``) when neither --url nor MAB_API_URL is set.
_LOCAL_URL = "http://127.0.0.1:{port}"


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _guardrail_lines(raw: object) -> list[str]:
    """Whatever the stats carry under ``guardrails``: a list of objects (metric, status
    or breached, arm), an object of them by name, or nothing."""
    if raw is None:
        return ["no guardrails reported"]
    items: Sequence[Any]
    if isinstance(raw, Mapping):
        items = [
            {"metric": k, **v} if isinstance(v, Mapping) else {"metric": k, "status": v}
            for k, v in raw.items()
        ]
    elif isinstance(raw, list):
        items = raw
    else:
        return [f"guardrails: {raw!r}"]
    if not items:
        return ["no guardrails configured"]
    lines = []
    for item in items:
        if not isinstance(item, Mapping):
            lines.append(str(item))
            continue
        name = item.get("metric", item.get("name", "?"))
        status = item.get("status")
        if status is None and "breached" in item:
            status = "BREACHED" if item["breached"] else "ok"
        arm = item.get("arm_id")
        lines.append(
            f"{name}: {status if status is not None else '?'}" + (f" ({arm})" if arm else "")
        )
    return lines


def render(stats: StatsPublic, markdown: bool = False) -> str:
    """The summary as text, or as Markdown (headings and tables)."""
    # A decider with guardrails adds them to the stats model; read them from the dump, so
    # a model without the field (or with another shape) reads as "none reported".
    raw = stats.model_dump()
    title = f"Decision summary: {stats.experiment_id}"
    out: list[str] = [f"# {title}" if markdown else title, ""]
    stopping = stats.stopping
    if stopping is None:
        out.append("Winner: not yet (no rewards folded)")
    else:
        verdict = stopping.winner or "not yet"
        out.append(f"Winner: {verdict}")
        out.append(
            f"Rule: P(best) >= {stopping.stop_probability:g} and expected loss <= "
            f"{stopping.stop_expected_loss:.4g} (posterior: {stopping.posterior}); "
            f"leader now: {stopping.leader}"
        )
        out.append("")
        rows = [(a.arm_id, _pct(a.p_best), f"{a.expected_loss:.4g}") for a in stopping.arms]
        out.extend(_table(("arm", "P(best)", "expected loss"), rows, markdown))
    out.append("")
    uplift = stats.uplift
    if uplift is None:
        out.append("Uplift vs holdout: no holdout")
    else:
        out.append(
            f"Uplift vs holdout ({_pct(uplift.holdout_share)} on {uplift.control_arm_id}): "
            f"{_num(uplift.uplift)} per visitor, {_pct(uplift.confidence)} anytime-valid "
            f"interval [{uplift.low:.4g}, {uplift.high:.4g}] (bandit {_num(uplift.bandit_mean)} "
            f"over {uplift.bandit_visitors:,} visitors, holdout {_num(uplift.holdout_mean)} "
            f"over {uplift.holdout_visitors:,})"
        )
    out.append("")
    guardrails = raw.get("guardrails")
    out.append("Guardrails:")
    out.extend(("- " if markdown else "  ") + line for line in _guardrail_lines(guardrails))
    return "\n".join(out) + "\n"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], markdown: bool) -> list[str]:
    if markdown:
        return [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows),
        ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]


def fetch(
    url: str, api_key: str | None, experiment_id: str, transport: httpx.BaseTransport | None = None
) -> StatsPublic:
    with MabClient(
        url, api_key=api_key, timeout=10.0, retry=RetryPolicy(max_attempts=2), transport=transport
    ) as c:
        return c.stats(experiment_id)


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        experiment: Annotated[str, typer.Option("--experiment", help="The experiment id.")],
        markdown: Annotated[
            Path | None, typer.Option("--markdown", help="Also write the summary as Markdown.")
        ] = None,
        url: Annotated[
            str | None,
            typer.Option(help="The decider's URL [env MAB_API_URL; default the local stack]."),
        ] = None,
        api_key: Annotated[
            str | None, typer.Option(help="A read key [env MAB_API_KEY].", envvar="MAB_API_KEY")
        ] = None,
    ) -> None:
        """Print an experiment's decision summary: the winner (or not yet), P(best) and
        expected loss per arm, the uplift over the holdout and the guardrails' status."""
        target = (
            url
            or os.environ.get("MAB_API_URL")
            or _LOCAL_URL.format(port=StackConfig.product().ports.api)
        )
        try:
            stats = fetch(target, api_key, experiment)
        except MabError as exc:
            typer.echo(f"report: cannot read {experiment!r} from {target}: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(render(stats), nl=False)
        if markdown is not None:
            markdown.write_text(render(stats, markdown=True))
            typer.echo(f"wrote {markdown}")

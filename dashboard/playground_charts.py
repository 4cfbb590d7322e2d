"""Charts of the simulator playground: regret, arm selection and the drift schedule.

Pure altair like :mod:`dashboard.charts`, whose arm colours and legend they reuse, so an
arm has the same colour in the live tab and in the playground.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from dashboard.charts import AnyChart, arm_lines, stacked_share


def strategy_color(strategies: Sequence[str]) -> alt.Scale:
    return alt.Scale(domain=list(strategies), scheme="dark2")


def regret_chart(regret: pd.DataFrame) -> AnyChart:
    """Mean cumulative regret per strategy with its 10-90 % band across runs.

    The band matters: with few runs one lucky strategy can look best by noise alone.
    """
    strategies = list(dict.fromkeys(regret["strategy"]))
    color = alt.Color("strategy:N", scale=strategy_color(strategies), legend=alt.Legend(title=None))
    x = alt.X("step:Q", title="step")
    band = (
        alt.Chart(regret)
        .mark_area(opacity=0.15)
        .encode(x=x, y="regret_p10:Q", y2="regret_p90:Q", color=color)
    )
    line = (
        alt.Chart(regret)
        .mark_line(strokeWidth=2)
        .encode(
            x=x,
            y=alt.Y("regret_mean:Q", title="cumulative regret (mean over runs)"),
            color=color,
            tooltip=[
                alt.Tooltip("strategy:N"),
                alt.Tooltip("step:Q"),
                alt.Tooltip("regret_mean:Q", title="mean", format=",.1f"),
                alt.Tooltip("regret_p10:Q", title="p10", format=",.1f"),
                alt.Tooltip("regret_p90:Q", title="p90", format=",.1f"),
            ],
        )
    )
    return alt.layer(band, line).properties(height=320, title="Cumulative regret")


def selection_chart(selection: pd.DataFrame, arm_ids: Sequence[str], strategy: str) -> AnyChart:
    """Share of picks per arm over time for one strategy, stacked to 100 %."""
    chart = stacked_share(
        selection[selection["strategy"] == strategy],
        alt.X("step:Q", title="step"),
        alt.Y("share:Q", title="share of picks"),
        arm_ids,
        [alt.Tooltip("step:Q"), alt.Tooltip("arm:N"), alt.Tooltip("share:Q", format=".1%")],
    )
    return chart.properties(height=220, title=f"Arm selection: {strategy}")


def true_means_chart(true_means: pd.DataFrame, arm_ids: Sequence[str]) -> AnyChart:
    """The true conversion rate of each arm over the steps (the drift schedule)."""
    chart = arm_lines(
        true_means,
        alt.X("step:Q", title="step"),
        alt.Y("mean:Q", title="true conversion rate", axis=alt.Axis(format="%")),
        arm_ids,
        [alt.Tooltip("step:Q"), alt.Tooltip("arm:N"), alt.Tooltip("mean:Q", format=".1%")],
        interpolate="step-after",
        strokeWidth=2,
    )
    return chart.properties(height=220, title="True rates (drift schedule)")

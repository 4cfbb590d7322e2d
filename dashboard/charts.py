"""Pure transforms: API JSON → pandas frames → altair charts (no Streamlit, no I/O).

Kept free of Streamlit so every number the dashboard shows can be unit-tested with known
input. Frames are "long" (one row per time x arm) because that is what altair wants and
what makes 2 and 50 arms the same code path. Arm colours use one fixed domain (the
experiment's arm order) in every chart, so "green-button" has the same colour everywhere.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any, TypeAlias

import altair as alt
import pandas as pd

from mab_client import Stats, Timeseries

AnyChart: TypeAlias = alt.Chart | alt.LayerChart | alt.FacetChart


def _load_beta_ppf() -> Callable[..., Any] | None:
    """scipy's Beta quantile function if scipy is installed (it is optional)."""
    try:
        stats = importlib.import_module("scipy.stats")
    except ImportError:
        return None
    ppf: Callable[..., Any] = stats.beta.ppf
    return ppf


_BETA_PPF = _load_beta_ppf()

WINNER_CHANGE = "winner change"
CHANGE_POINT = "change point"

ARM_TABLE_COLUMNS = [
    "arm",
    "decisions",
    "units",
    "traffic_share",
    "propensity",
    "pulls",
    "conversions",
    "mean",
    "ci_low",
    "ci_high",
]
SERIES_COLUMNS = [
    "time",
    "arm",
    "decisions",
    "rewards",
    "reward_sum",
    "conversion_rate",
    "traffic_share",
]
MARKER_COLUMNS = ["time", "kind", "label"]


# --------------------------------------------------------------------------- statistics


def beta_interval(successes: float, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Central credible interval of Beta(1 + successes, 1 + trials - successes).

    The uniform prior makes an arm without data honestly "anywhere in [0, 1]" instead of
    a misleading 0 %. Without scipy the Beta is approximated by a normal with the same
    mean and variance, clipped to [0, 1] (good enough for a dashboard from ~30 rewards).
    """
    s = min(max(float(successes), 0.0), float(trials))
    a = 1.0 + s
    b = 1.0 + trials - s
    tail = (1.0 - level) / 2.0
    if _BETA_PPF is not None:
        lo, hi = _BETA_PPF([tail, 1.0 - tail], a, b)
        return float(lo), float(hi)
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    z = NormalDist().inv_cdf(1.0 - tail)
    return max(0.0, mean - z * sd), min(1.0, mean + z * sd)


def arm_table(stats: Stats, level: float = 0.95) -> pd.DataFrame:
    """One row per arm in config order: served traffic, rewards, mean with credible interval.

    ``traffic_share`` is this arm's share of all decisions served so far (NaN before the
    first decision); ``propensity`` is where the *next* decision goes, so the two side by
    side show whether the policy is shifting. ``mean`` is NaN until the arm has a reward.
    """
    arms = stats.arms
    total_decisions = sum(a.decisions for a in arms)
    rows: list[dict[str, Any]] = []
    for a in arms:
        lo, hi = beta_interval(a.reward_sum, a.pulls, level)
        rows.append(
            {
                "arm": a.arm_id,
                "decisions": int(a.decisions),
                "units": int(a.units),
                "traffic_share": a.decisions / total_decisions if total_decisions else math.nan,
                "propensity": float(a.propensity),
                "pulls": int(a.pulls),
                "conversions": float(a.reward_sum),
                "mean": a.reward_sum / a.pulls if a.pulls else math.nan,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return pd.DataFrame(rows, columns=ARM_TABLE_COLUMNS)


def leading_arm(table: pd.DataFrame) -> str | None:
    """The arm with the highest posterior mean (1 + s) / (2 + n); None without rewards.

    The posterior mean rather than the raw mean, so one lucky conversion out of one pull
    does not crown an arm. Ties go to the first arm in config order.
    """
    rewarded = table[table["pulls"] > 0]
    if rewarded.empty:
        return None
    post = (1.0 + rewarded["conversions"]) / (2.0 + rewarded["pulls"])
    return str(rewarded["arm"].iloc[int(post.to_numpy().argmax())])


# --------------------------------------------------------------------------- time series


def arm_order(ts: Timeseries) -> list[str]:
    """Config order, then any arm that only appears in the points (removed from config)."""
    order = list(ts.arm_ids)
    seen = set(order)
    for p in ts.points:
        if p.arm_id not in seen:  # an arm the config no longer lists: keep it, last
            seen.add(p.arm_id)
            order.append(p.arm_id)
    return order


def to_time(seconds: pd.Series | Sequence[float]) -> pd.Series:
    """Unix seconds → tz-aware UTC timestamps (the API's buckets are UTC)."""
    secs = pd.Series(seconds, dtype="float64").reset_index(drop=True)
    return pd.to_datetime(secs, unit="s", utc=True).astype("datetime64[ns, UTC]")


def series_frame(ts: Timeseries) -> pd.DataFrame:
    """The points on a full (bucket x arm) grid, sorted by time then arm order.

    The API omits (bucket, arm) pairs without data. Filled in: counts 0, conversion rate
    NaN (no rewards means unknown, not 0 %), traffic share 0 when the bucket served any
    decision (the arm got none of it) and NaN when it served none.
    """
    arms = arm_order(ts)
    if not ts.points:
        return pd.DataFrame({c: pd.Series(dtype=_SERIES_DTYPES[c]) for c in SERIES_COLUMNS})
    raw = pd.DataFrame([p.model_dump() for p in ts.points])
    buckets = sorted(raw["bucket_start"].unique())
    grid = pd.MultiIndex.from_product([buckets, arms], names=["bucket_start", "arm_id"])
    df = raw.set_index(["bucket_start", "arm_id"]).reindex(grid).reset_index()
    for col in ("decisions", "rewards"):
        df[col] = df[col].fillna(0).astype("int64")
    df["reward_sum"] = df["reward_sum"].fillna(0.0).astype("float64")
    df["conversion_rate"] = pd.to_numeric(df["conversion_rate"], errors="coerce").astype("float64")
    served = df.groupby("bucket_start")["decisions"].transform("sum")
    share = pd.to_numeric(df["traffic_share"], errors="coerce").astype("float64")
    df["traffic_share"] = share.where(share.notna() | (served == 0), 0.0)
    df["time"] = to_time(df["bucket_start"])
    df = df.rename(columns={"arm_id": "arm"})
    return df[SERIES_COLUMNS].reset_index(drop=True)


_SERIES_DTYPES = {
    "time": "datetime64[ns, UTC]",
    "arm": "str",
    "decisions": "int64",
    "rewards": "int64",
    "reward_sum": "float64",
    "conversion_rate": "float64",
    "traffic_share": "float64",
}


def cumulative_frame(series: pd.DataFrame) -> pd.DataFrame:
    """Running totals per arm over the window: decisions and reward (conversions)."""
    out = series[["time", "arm", "decisions", "reward_sum"]].copy()
    out["cumulative_decisions"] = out.groupby("arm", sort=False)["decisions"].cumsum()
    out["cumulative_reward"] = out.groupby("arm", sort=False)["reward_sum"].cumsum()
    return out[["time", "arm", "cumulative_decisions", "cumulative_reward"]].reset_index(drop=True)


def markers_frame(ts: Timeseries) -> pd.DataFrame:
    """Winner changes and detected change points as (time, kind, label), sorted by time."""
    rows: list[dict[str, Any]] = []
    for w in ts.winner_changes:
        label = f"{w.from_arm} → {w.to_arm}" if w.from_arm else f"→ {w.to_arm}"
        rows.append({"seconds": float(w.bucket_start), "kind": WINNER_CHANGE, "label": label})
    for c in ts.change_points:
        detector = c.detector
        label = f"{c.arm_id} ({detector})" if detector else c.arm_id
        rows.append({"seconds": float(c.ts), "kind": CHANGE_POINT, "label": label})
    if not rows:
        return pd.DataFrame(
            {
                "time": pd.Series(dtype="datetime64[ns, UTC]"),
                "kind": pd.Series(dtype="str"),
                "label": pd.Series(dtype="str"),
            }
        )
    df = pd.DataFrame(rows).sort_values(["seconds", "kind"], kind="stable").reset_index(drop=True)
    df["time"] = to_time(df["seconds"])
    return df[MARKER_COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------- charts


def arm_color(arm_ids: Sequence[str]) -> alt.Scale:
    """One colour per arm in config order; 20 distinct colours, then they repeat."""
    if len(arm_ids) <= 10:
        return alt.Scale(domain=list(arm_ids), scheme="tableau10")
    return alt.Scale(domain=list(arm_ids), scheme="tableau20")


def arm_legend(arm_ids: Sequence[str]) -> alt.Legend:
    return alt.Legend(
        title="arm", symbolLimit=0, columns=1 if len(arm_ids) <= 25 else 2, labelLimit=140
    )


def arm_colors(arm_ids: Sequence[str]) -> alt.Color:
    """The ``arm`` field in its arm's colour, with the arm legend."""
    return alt.Color("arm:N", scale=arm_color(arm_ids), legend=arm_legend(arm_ids))


def arm_lines(
    data: pd.DataFrame,
    x: alt.X,
    y: alt.Y,
    arm_ids: Sequence[str],
    tooltip: list[alt.Tooltip],
    **mark: Any,
) -> alt.Chart:
    """One line per arm (``mark`` styles it), in the arm's colour: the live tab's series
    and the playground's drift schedule read the same way."""
    chart: alt.Chart = (
        alt.Chart(data)
        .mark_line(**mark)
        .encode(x=x, y=y, color=arm_colors(arm_ids), tooltip=tooltip)
    )
    return chart


def _time_x(title: str) -> alt.X:
    return alt.X("time:T", title=title, scale=alt.Scale(type="utc"))


def _time_tooltip() -> alt.Tooltip:
    return alt.Tooltip("time:T", title="time (UTC)", format="%Y-%m-%d %H:%M", formatType="utc")


def _series_tooltip(value: alt.Tooltip, *counts: alt.Tooltip) -> list[alt.Tooltip]:
    """A live series point's tooltip: its bucket's time, its arm, the value drawn, then
    the counts behind that value."""
    return [_time_tooltip(), alt.Tooltip("arm:N"), value, *counts]


def _with_markers(base: AnyChart, markers: pd.DataFrame) -> AnyChart:
    """Overlay vertical rules: solid grey where the winner changed, dashed red at change
    points, each with a tooltip naming the arms."""
    if markers.empty:
        return base
    is_cp = alt.datum.kind == CHANGE_POINT
    rules = (
        alt.Chart(markers)
        .mark_rule(strokeWidth=1.5, opacity=0.8)
        .encode(
            x=alt.X("time:T"),
            color=alt.condition(is_cp, alt.value("#d62728"), alt.value("#555555")),
            strokeDash=alt.condition(is_cp, alt.value([5, 3]), alt.value([1, 0])),
            tooltip=[
                alt.Tooltip("kind:N"),
                alt.Tooltip("label:N", title="what"),
                _time_tooltip(),
            ],
        )
    )
    return alt.layer(base, rules)


def conversion_rate_chart(
    series: pd.DataFrame, markers: pd.DataFrame, arm_ids: Sequence[str], bucket: str = "hour"
) -> AnyChart:
    """Per-bucket conversion rate per arm (buckets without rewards are gaps, not zeros)."""
    base = arm_lines(
        series.dropna(subset=["conversion_rate"]),
        _time_x(f"{bucket} (UTC)"),
        alt.Y("conversion_rate:Q", title="conversion rate", axis=alt.Axis(format="%")),
        arm_ids,
        _series_tooltip(
            alt.Tooltip("conversion_rate:Q", title="conversion rate", format=".2%"),
            alt.Tooltip("rewards:Q", title="rewards"),
            alt.Tooltip("decisions:Q", title="decisions"),
        ),
        point=True,
    )
    return _with_markers(
        base.properties(height=300, title=f"Conversion rate per {bucket}"), markers
    )


def traffic_share_chart(
    series: pd.DataFrame, markers: pd.DataFrame, arm_ids: Sequence[str], bucket: str = "hour"
) -> AnyChart:
    """Per-bucket share of decisions per arm, stacked to 100 %: where the policy sent traffic."""
    base = stacked_share(
        series.dropna(subset=["traffic_share"]),
        _time_x(f"{bucket} (UTC)"),
        alt.Y("traffic_share:Q", title="traffic share"),
        arm_ids,
        _series_tooltip(
            alt.Tooltip("traffic_share:Q", title="traffic share", format=".1%"),
            alt.Tooltip("decisions:Q", title="decisions"),
        ),
    )
    return _with_markers(base.properties(height=300, title=f"Traffic share per {bucket}"), markers)


def stacked_share(
    data: pd.DataFrame, x: alt.X, y: alt.Y, arm_ids: Sequence[str], tooltip: list[alt.Tooltip]
) -> alt.Chart:
    """Shares per arm (``y``) stacked to 100 %, arms stacked in config order: the live
    traffic share and the playground's arm selection read the same way."""
    chart: alt.Chart = (
        alt.Chart(data)
        .mark_area()
        .encode(
            x=x,
            y=y.stack("zero").axis(format="%").scale(domain=[0, 1]),
            color=arm_colors(arm_ids),
            order=alt.Order("arm_index:Q"),
            tooltip=tooltip,
        )
        .transform_calculate(arm_index=arm_index_expr(arm_ids))
    )
    return chart


def arm_index_expr(arm_ids: Sequence[str]) -> str:
    """A vega expression giving the arm's position in config order (stable stacking)."""
    return f"indexof({json.dumps(list(arm_ids))}, datum.arm)"


def cumulative_reward_chart(
    cumulative: pd.DataFrame, markers: pd.DataFrame, arm_ids: Sequence[str], bucket: str = "hour"
) -> AnyChart:
    """Cumulative reward per arm over the window, plus the total as a black line."""
    x = _time_x(f"{bucket} (UTC)")
    per_arm = arm_lines(
        cumulative,
        x,
        alt.Y("cumulative_reward:Q", title="cumulative reward"),
        arm_ids,
        _series_tooltip(
            alt.Tooltip("cumulative_reward:Q", title="cumulative reward", format=",.1f"),
            alt.Tooltip("cumulative_decisions:Q", title="decisions"),
        ),
        point=True,
    )
    total = (
        alt.Chart(cumulative)
        .mark_line(color="black", strokeWidth=2.5)
        .encode(
            x=x,
            y=alt.Y("sum(cumulative_reward):Q", title="cumulative reward"),
            tooltip=[
                _time_tooltip(),
                alt.Tooltip("sum(cumulative_reward):Q", title="all arms", format=",.1f"),
            ],
        )
    )
    base = alt.layer(per_arm, total).properties(
        height=300, title="Cumulative reward (black: all arms)"
    )
    return _with_markers(base, markers)


def current_rate_chart(table: pd.DataFrame) -> AnyChart:
    """Each arm's mean with its credible interval, arms left to right in config order.

    Arms go on x: Streamlit stretches charts to the container's width, which suits a
    discrete axis of 2 or 50 arms; a discrete y axis would need a height per arm.
    """
    arm_ids = table["arm"].tolist()
    x = alt.X("arm:N", sort=arm_ids, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=120))
    color = alt.Color("arm:N", scale=arm_color(arm_ids), legend=None)
    base = alt.Chart(table)
    bars = base.mark_rule(strokeWidth=4, opacity=0.6).encode(
        x=x,
        y=alt.Y("ci_low:Q", title="conversion rate", axis=alt.Axis(format="%")),
        y2="ci_high:Q",
        color=color,
    )
    tooltip = [
        alt.Tooltip("arm:N"),
        alt.Tooltip("mean:Q", format=".2%"),
        alt.Tooltip("ci_low:Q", title="95% low", format=".2%"),
        alt.Tooltip("ci_high:Q", title="95% high", format=".2%"),
        alt.Tooltip("pulls:Q", title="rewards observed"),
    ]
    points = base.mark_point(filled=True, size=70, opacity=1).encode(
        x=x, y="mean:Q", color=color, tooltip=tooltip
    )
    return alt.layer(bars, points).properties(
        height=240, title="Conversion rate with 95% credible interval"
    )


def current_share_chart(table: pd.DataFrame) -> AnyChart:
    """Share of traffic served so far next to the current policy's propensity per arm:
    a gap between the two bars is the policy shifting traffic right now."""
    arm_ids = table["arm"].tolist()
    long = table.melt(
        id_vars=["arm"],
        value_vars=["traffic_share", "propensity"],
        var_name="measure",
        value_name="share",
    )
    long["measure"] = long["measure"].map(
        {"traffic_share": "served so far", "propensity": "next decision"}
    )
    chart: AnyChart = (
        alt.Chart(long.dropna(subset=["share"]))
        .mark_bar()
        .encode(
            x=alt.X(
                "arm:N", sort=arm_ids, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=120)
            ),
            xOffset=alt.XOffset("measure:N", sort=["served so far", "next decision"]),
            y=alt.Y("share:Q", title="share of traffic", axis=alt.Axis(format="%")),
            color=alt.Color(
                "measure:N",
                scale=alt.Scale(
                    domain=["served so far", "next decision"], range=["#9ecae1", "#08519c"]
                ),
                legend=alt.Legend(title=None, orient="right"),
            ),
            tooltip=[
                alt.Tooltip("arm:N"),
                alt.Tooltip("measure:N"),
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
        .properties(height=300, title="Traffic share per arm")
    )
    return chart

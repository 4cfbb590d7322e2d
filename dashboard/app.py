"""Streamlit dashboard: live experiment stats over time, and a simulator playground.

Run: ``streamlit run dashboard/app.py`` (API base from ``MAB_API_URL``, default
http://127.0.0.1:8000). The Live tab reads the decider's HTTP API only (never Redis), so
it shows exactly what clients of the API see and works wherever the API is reachable.
Every API failure is caught at the edge of a section and shown as a message: a dashboard
that dies with a traceback when the API restarts is useless during an incident.
The playground tab lives in :mod:`dashboard.playground`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import streamlit as st

from dashboard import charts, health, ope_view
from dashboard.api import Bucket, client_from_env, explain, is_rejection, show_failure
from dashboard.playground import render_playground
from mab_client import MabClient, MabError, NotFoundError, Stats, Timeseries

#: Windows strictly inside the API's maximum span per bucket (31 days / 24 hours), so
#: clock skew between us and the API never turns a preset into a 422.
WINDOWS: Final[dict[Bucket, dict[str, int]]] = {
    "hour": {
        "last 6 hours": 6 * 3600,
        "last 24 hours": 24 * 3600,
        "last 48 hours": 48 * 3600,
        "last 7 days": 7 * 86400,
        "last 30 days": 30 * 86400,
    },
    "minute": {
        "last 30 minutes": 1800,
        "last 60 minutes": 3600,
        "last 3 hours": 3 * 3600,
        "last 12 hours": 12 * 3600,
    },
}
DEFAULT_WINDOW: Final[dict[Bucket, str]] = {"hour": "last 48 hours", "minute": "last 60 minutes"}
REFRESH_SECONDS: Final = [2, 5, 10, 30, 60]
TABS: Final = ["Live stats", "Simulator playground"]


# --------------------------------------------------------------------------- live tab


def render_live(client: MabClient) -> None:
    """Experiment picker and refresh controls; the data panel is an auto-run fragment."""
    try:
        experiments = client.list_experiments(limit=1000)
    except MabError as exc:
        show_failure(exc, client.base_url, "API unavailable")
        st.button("Retry", key="retry_list")
        return
    if not experiments:
        st.info(
            "No experiments yet. Create one with `POST /experiments` "
            f"on {client.base_url} (see the README), then reload."
        )
        return
    ids = [e.experiment_id for e in experiments]
    wanted = st.query_params.get("experiment")
    index = ids.index(wanted) if wanted in ids else 0
    pick, bucket_col, window_col, refresh_col = st.columns([3, 1.2, 1.5, 1.5])
    exp_id = pick.selectbox(
        "Experiment", ids, index=index, key="experiment", help=f"{len(ids)} experiments"
    )
    bucket: Bucket = bucket_col.radio("Bucket", ["hour", "minute"], horizontal=True, key="bucket")
    windows = WINDOWS[bucket]
    window = window_col.selectbox(
        "Window",
        list(windows),
        index=list(windows).index(DEFAULT_WINDOW[bucket]),
        key=f"window_{bucket}",
    )
    auto = refresh_col.toggle("Auto-refresh", value=True, key="auto_refresh")
    every = refresh_col.select_slider(
        "Every (s)", REFRESH_SECONDS, value=10, key="refresh_s", disabled=not auto
    )
    # Redefined each run so the toggle and interval take effect; the fragment's identity
    # is its function and position, so Streamlit treats it as the same fragment.
    panel = st.fragment(run_every=every if auto else None)(live_panel)
    panel(client, exp_id, bucket, windows[window])
    # Outside the fragment: evaluating reads the event log, so never on a refresh tick.
    current = next(e.strategy for e in experiments if e.experiment_id == exp_id)
    ope_view.render_offpolicy(client, exp_id, current)


def live_panel(client: MabClient, exp_id: str, bucket: Bucket, span_s: int) -> None:
    """Current arm table plus the time series; reruns alone on every refresh tick."""
    try:
        stats = client.stats(exp_id)
    except MabError as exc:
        not_found = f"Experiment `{exp_id}` was not found (deleted, or another API?)."
        show_failure(exc, client.base_url, "API unavailable", not_found)
        return
    table = charts.arm_table(stats)
    served = int(table["decisions"].sum())
    rewards = int(table["pulls"].sum())
    conversions = float(table["conversions"].sum())
    leader = charts.leading_arm(table)
    params = json.dumps(stats.strategy_params) if stats.strategy_params else "defaults"

    m = st.columns(5)
    m[0].metric("Strategy", stats.strategy, help=f"params: {params}", border=True)
    m[1].metric("Decisions served", f"{served:,}", border=True)
    m[2].metric("Rewards observed", f"{rewards:,}", border=True)
    m[3].metric(
        "Conversion rate",
        f"{conversions / rewards:.2%}" if rewards else "-",
        border=True,
    )
    m[4].metric(
        "Leading arm",
        leader or "-",
        help="Highest posterior mean (1 + conversions) / (2 + rewards) among arms with rewards.",
        border=True,
    )
    units = int(table["units"].sum())
    assignment = f" · assignment: {stats.assignment}" if stats.assignment else ""
    st.caption(
        f"{len(table)} arms · strategy params: {params} · config v{stats.config_version} · "
        f"{stats.snapshot_version:,} events folded{assignment} · {units:,} unique units · "
        f"updated {datetime.now(UTC):%H:%M:%S} UTC"
    )
    health_panel(stats)
    if served == 0 and rewards == 0:
        st.info(
            f"No decisions or rewards yet for `{exp_id}`. Send traffic with "
            f"`GET /decision?{urlencode({'experiment_id': exp_id})}` and `POST /reward`."
        )
        st.dataframe(table, hide_index=True, column_config=ARM_COLUMNS, key="arm_table")
        return

    left, right = st.columns([3, 2])
    with left:
        st.dataframe(
            table,
            hide_index=True,
            column_config=ARM_COLUMNS,
            height=min(38 + 35 * len(table), 640),
            key="arm_table",
        )
    with right:
        st.altair_chart(charts.current_rate_chart(table), width="stretch")
        st.altair_chart(charts.current_share_chart(table), width="stretch")
    render_timeseries(client, exp_id, bucket, span_s)


def health_panel(stats: Stats) -> None:
    """What says whether the numbers can be trusted and whether to stop
    (:mod:`dashboard.health`): the SRM check, the guardrails, the stopping rule and the
    uplift over the holdout, each shown only when the experiment has it."""
    srm = health.srm_status(stats)
    if srm is not None:
        state, line = srm
        if state == "alarm":
            st.error(line, icon="⚠️")
        else:
            st.caption(line)
    guards = health.guardrail_table(stats)
    if guards is not None:
        breached = guards[guards["status"] == "breached"]
        if not breached.empty:
            arms = ", ".join(sorted(set(breached["arm_id"])))
            st.error(f"Guardrail breached: {arms} (docs/guardrails.md)", icon="⚠️")
        st.caption("Guardrails: each arm's metric against the control arm (anytime-valid)")
        st.dataframe(guards, hide_index=True, key="guardrail_table")
    stopping = health.stopping_line(stats)
    if stopping is not None:
        state, line = stopping
        if state == "winner":
            st.success(line)
        else:
            st.caption(line)
    uplift = health.uplift_line(stats)
    if uplift is not None:
        state, line = uplift
        if state == "better":
            st.success(line)
        elif state == "worse":
            st.warning(line, icon="⚠️")
        else:
            st.caption(line)


def _share_column(label: str, description: str) -> Any:
    """A share of traffic (0 to 1) as a percent bar."""
    return st.column_config.ProgressColumn(
        label, help=description, format="percent", min_value=0.0, max_value=1.0
    )


ARM_COLUMNS: Final[dict[str, Any]] = {
    "arm": st.column_config.TextColumn("arm", pinned=True),
    "decisions": st.column_config.NumberColumn("decisions", help="Decisions served."),
    "units": st.column_config.NumberColumn(
        "unique units",
        help="Units (visitors) assigned this arm, each once (per allocation version in the "
        "consistent mode); 0 when requests carry no unit id.",
    ),
    "traffic_share": _share_column("traffic share", "Share of all decisions served so far."),
    "propensity": _share_column(
        "next decision", "Probability that the current policy picks this arm now."
    ),
    "pulls": st.column_config.NumberColumn("rewards", help="Rewards observed (pulls)."),
    "conversions": st.column_config.NumberColumn("conversions", help="Sum of rewards."),
    "mean": st.column_config.NumberColumn("mean", format="percent", help="conversions/rewards"),
    "ci_low": st.column_config.NumberColumn(
        "95% low", format="percent", help="Beta(1 + conversions, 1 + misses) credible interval"
    ),
    "ci_high": st.column_config.NumberColumn(
        "95% high", format="percent", help="Beta(1 + conversions, 1 + misses) credible interval"
    ),
}


def fetch_timeseries(
    client: MabClient, exp_id: str, bucket: Bucket, span_s: int
) -> tuple[Timeseries | None, Bucket]:
    """The series, falling back from minute to hour buckets if the API rejects minutes.

    Returns ``(None, bucket)`` after showing a message when there is nothing to draw.
    """
    start = int(time.time()) - span_s
    try:
        return client.timeseries(exp_id, bucket, start=start), bucket
    except NotFoundError:
        st.info(
            "No time series for this experiment: this API version has no "
            "`/experiments/{id}/timeseries` endpoint."
        )
    except MabError as exc:
        message = explain(exc, client.base_url)
        if not is_rejection(exc):
            st.error(f"**Time series unavailable.** {message}")
        elif bucket == "minute":
            st.warning(f"The API does not serve per-minute buckets ({message}); showing hours.")
            return fetch_timeseries(client, exp_id, "hour", min(span_s, 30 * 86400))
        else:
            st.warning(f"The API rejected the time-series query: {message}")
    return None, bucket


def render_timeseries(client: MabClient, exp_id: str, bucket: Bucket, span_s: int) -> None:
    """Per-bucket conversion rate and traffic share, cumulative reward, shift markers."""
    st.subheader("Over time")
    ts, bucket = fetch_timeseries(client, exp_id, bucket, span_s)
    if ts is None:
        return
    series = charts.series_frame(ts)
    if series.empty:
        st.info(
            f"No {bucket} buckets in this window yet: the projector fills them from the "
            "event log (by each event's own time)."
        )
        return
    markers = charts.markers_frame(ts)
    arm_ids = charts.arm_order(ts)
    left, right = st.columns(2)
    with left:
        st.altair_chart(
            charts.conversion_rate_chart(series, markers, arm_ids, bucket), width="stretch"
        )
    with right:
        st.altair_chart(
            charts.traffic_share_chart(series, markers, arm_ids, bucket), width="stretch"
        )
    cumulative = charts.cumulative_frame(series)
    st.altair_chart(
        charts.cumulative_reward_chart(cumulative, markers, arm_ids, bucket), width="stretch"
    )
    n_win = int((markers["kind"] == charts.WINNER_CHANGE).sum())
    n_cp = int((markers["kind"] == charts.CHANGE_POINT).sum())
    st.caption(
        f"Vertical lines: solid grey = the winning arm changed ({n_win}), dashed red = a "
        f"change point was detected ({n_cp}). Winner = highest conversion rate among arms "
        "with at least 20 rewards in the bucket."
    )
    if not markers.empty:
        with st.expander(f"Shifts in this window ({len(markers)})"):
            st.dataframe(markers, hide_index=True, key="markers_table")


# --------------------------------------------------------------------------- page


def main() -> None:
    st.set_page_config(page_title="MAB optimizer", page_icon="🎯", layout="wide")
    st.title("Multi-armed bandit optimizer")
    # Lazy tabs: only the open tab's code runs, so the live tab's refresh never waits for
    # a simulation and the playground never polls the API.
    live, playground = st.tabs(TABS, key="tab", on_change="rerun")
    if live.open is not False:
        with live:
            render_live(client_from_env())
    if playground.open is not False:
        with playground:
            render_playground()


main()

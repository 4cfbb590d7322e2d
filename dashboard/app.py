"""Streamlit dashboard: live experiment stats over time, and a simulator playground.

Run: ``streamlit run dashboard/app.py`` (API base from ``MAB_API_URL``, default
http://127.0.0.1:8000). The Live tab reads the decider's HTTP API only (never Redis), so
it shows exactly what clients of the API see and works wherever the API is reachable.
Every API failure is caught at the edge of a section and shown as a message: a dashboard
that dies with a traceback when the API restarts is useless during an incident.
The playground runs :mod:`bandit_core.simulate`'s code in-process (see
:mod:`dashboard.simulator`), cached per input, with a work budget so the page stays
responsive.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from bandit_core.simulate import Scenario, ScenarioError, load_scenario
from bandit_core.strategies import STRATEGIES
from dashboard import charts, ope_view, simulator
from dashboard.api import Bucket, client_from_env, explain, is_rejection
from mab_client import MabClient, MabError, NotFoundError, Timeseries

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
        st.error(f"**API unavailable.** {explain(exc, client.base_url)}")
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
    except NotFoundError:
        st.warning(f"Experiment `{exp_id}` was not found (deleted, or another API?).")
        return
    except MabError as exc:
        st.error(f"**API unavailable.** {explain(exc, client.base_url)}")
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
    st.caption(
        f"{len(table)} arms · strategy params: {params} · config v{stats.config_version} · "
        f"{stats.snapshot_version:,} events folded · updated "
        f"{datetime.now(UTC):%H:%M:%S} UTC"
    )
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


ARM_COLUMNS: Final[dict[str, Any]] = {
    "arm": st.column_config.TextColumn("arm", pinned=True),
    "decisions": st.column_config.NumberColumn("decisions", help="Decisions served."),
    "traffic_share": st.column_config.ProgressColumn(
        "traffic share",
        help="Share of all decisions served so far.",
        format="percent",
        min_value=0.0,
        max_value=1.0,
    ),
    "propensity": st.column_config.ProgressColumn(
        "next decision",
        help="Probability that the current policy picks this arm now.",
        format="percent",
        min_value=0.0,
        max_value=1.0,
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


# --------------------------------------------------------------------------- playground

SOURCES: Final = ["Edit rates", "Scenario file", "Upload"]
DEFAULT_STRATEGIES: Final = ("thompson", "discounted_thompson", "sw_ucb")
EDITOR_HORIZON: Final = 2000


@st.cache_data(max_entries=32, show_spinner="Simulating…")
def simulate_cached(
    scenario_text: str, strategies: tuple[tuple[str, str], ...], runs: int, seed: int
) -> simulator.PlaygroundResult:
    """Cached on the scenario's JSON text, so equal inputs never simulate twice."""
    scenario = simulator.scenario_from_bytes(scenario_text.encode(), "scenario")
    specs = [(name, json.loads(params)) for name, params in strategies]
    return simulator.run_playground(scenario, specs, runs, seed)


def choose_scenario() -> tuple[Scenario, str] | None:
    """The scenario from the editor, a bundled file or an upload, and a path for the CLI.

    Shows the problem and returns None when the input is not a valid scenario.
    """
    source = st.radio("Scenario", SOURCES, horizontal=True, key="sim_source")
    try:
        if source == "Edit rates":
            return editor_scenario(), "playground.json"
        if source == "Scenario file":
            files = simulator.scenario_files()
            if not files:
                st.warning(f"No scenario files in {simulator.SCENARIO_DIR}.")
                return None
            names = [f.stem for f in files]
            default = names.index("daily_story") if "daily_story" in names else 0
            name = st.selectbox("Scenario file", names, index=default, key="sim_file")
            path = files[names.index(name)]
            scenario = load_scenario(path)
            if scenario.description:
                st.caption(scenario.description)
            return scenario, f"scenarios/{path.name}"
        upload = st.file_uploader(
            "Scenario JSON (the `mab simulate` format)", type=["json"], key="sim_upload"
        )
        if upload is None:
            st.info("Upload a scenario file, e.g. one of `scenarios/*.json`.")
            return None
        scenario = simulator.scenario_from_bytes(upload.getvalue(), upload.name)
        if scenario.description:
            st.caption(scenario.description)
        return scenario, upload.name
    except ScenarioError as exc:
        st.error(f"**Bad scenario.** {exc}")
        return None


def editor_scenario() -> Scenario:
    """Arms and a drift schedule (one row per segment: start step + rate per arm).

    The horizon is set below, with the other run settings, for every scenario source.
    """
    c1, c2 = st.columns([4, 1])
    arms_text = c1.text_input(
        "Arms", "blue, green, red", key="sim_arms", help="Names, or a number n for arm-1..arm-n."
    )
    period = int(
        c2.number_input(
            "Period (0 = none)",
            0,
            100_000,
            0,
            100,
            key="sim_period",
            help="Repeat the schedule every `period` steps (daily patterns).",
        )
    )
    arms = simulator.parse_arm_names(arms_text)
    st.caption(
        "Drift schedule: from step `start` on, each arm converts at its rate (0..1). "
        "Add rows for more shifts."
    )
    rate = st.column_config.NumberColumn(min_value=0.0, max_value=1.0, step=0.01, format="%.3f")
    edited = st.data_editor(
        simulator.default_segments(arms, EDITOR_HORIZON),
        num_rows="dynamic",
        hide_index=True,
        # JSON, not a join: arm names may hold any separator, and two arm lists must
        # never share the editor's state.
        key=f"sim_segments_{json.dumps(arms)}",
        column_config={
            "start": st.column_config.NumberColumn("start", min_value=0, step=1, required=True),
            **{a: rate for a in arms},
        },
    )
    return simulator.scenario_from_table(
        arms, pd.DataFrame(edited), EDITOR_HORIZON, period or None, name="playground"
    )


def render_playground() -> None:
    """Pick a scenario and strategies, run, and compare regret and arm selection."""
    st.caption(
        "Runs the service's strategy code on a scenario in the `mab simulate` format: "
        "each step a strategy picks an arm and sees a Bernoulli reward with the arm's "
        "current true rate. Regret = expected conversions lost against the best arm."
    )
    chosen = choose_scenario()
    if chosen is None:
        return
    scenario, cli_path = chosen
    names = list(STRATEGIES)
    picked = st.multiselect(
        "Strategies",
        names,
        default=[n for n in DEFAULT_STRATEGIES if n in names],
        key="sim_strategies",
    )
    if not picked:
        st.info("Pick at least one strategy.")
        return
    specs: list[tuple[str, dict[str, Any]]] = []
    with st.expander("Strategy parameters (JSON, validated like the API)"):
        for name in picked:
            text = st.text_input(name, "{}", key=f"sim_params_{name}")
            try:
                specs.append((name, simulator.parse_params(name, text)))
            except ValueError as exc:
                st.error(str(exc))
                return
    c1, c2, c3 = st.columns(3)
    runs = int(c1.number_input("Runs", 1, 500, 5, key="sim_runs"))
    horizon = int(
        c2.number_input(
            "Horizon (steps)",
            10,
            100_000,
            scenario.horizon,
            100,
            key=f"sim_run_horizon_{scenario.name}_{scenario.horizon}",
        )
    )
    seed = int(c3.number_input("Seed", 0, 2**31 - 1, 42, key="sim_seed"))
    try:
        if any(e.horizon != horizon for e in scenario.environments):
            scenario = simulator.with_horizon(scenario, horizon)
    except ScenarioError as exc:
        st.error(f"**Bad scenario.** {exc}")
        return

    budget = simulator.MAX_ARM_STEPS
    if simulator.arm_steps(scenario, 1, len(specs)) > budget:
        st.error(
            f"Too big for the playground: one run of {len(specs)} strategies x {horizon:,} "
            f"steps x {max(len(e.arms) for e in scenario.environments)} arms exceeds "
            f"{budget:,} arm-steps. Shorten the horizon, drop strategies, or use "
            "`mab simulate`."
        )
        return
    runs_eff = simulator.capped_runs(scenario, runs, len(specs))
    if runs_eff < runs:
        st.warning(
            f"{runs} runs exceed the playground's budget of {budget:,} arm-steps; "
            f"running {runs_eff}. Use `mab simulate --runs {runs}` for the full batch."
        )
    scenario_text = simulator.scenario_json(scenario)
    request = (
        scenario_text,
        tuple((name, json.dumps(params, sort_keys=True)) for name, params in specs),
        runs_eff,
        seed,
    )
    clicked = st.button("Run simulation", type="primary", key="sim_run")
    if clicked or "sim_request" not in st.session_state:
        st.session_state["sim_request"] = request
    shown = st.session_state["sim_request"]
    if shown != request:
        st.caption("Inputs changed: press **Run simulation** to update the results below.")
    try:
        result = simulate_cached(*shown)
    except (ScenarioError, ValueError) as exc:
        st.error(f"**Cannot simulate.** {exc}")
        return
    render_results(result, shown[1], cli_path, scenario_text, shown[3])


def render_results(
    result: simulator.PlaygroundResult,
    specs: tuple[tuple[str, str], ...],
    cli_path: str,
    scenario_text: str,
    seed: int,
) -> None:
    st.subheader(f"{result.runs} runs x {result.horizon:,} steps")
    summary = result.summary.sort_values("regret_mean", kind="stable").copy()
    summary["params"] = summary["params"].map(lambda p: json.dumps(p) if p else "defaults")
    st.dataframe(
        summary[
            [
                "strategy",
                "params",
                "regret_mean",
                "regret_std",
                "reward_mean",
                "best_arm_share_last_10pct",
            ]
        ],
        hide_index=True,
        key="sim_summary",
        column_config={
            "regret_mean": st.column_config.NumberColumn("regret (mean)", format="%.1f"),
            "regret_std": st.column_config.NumberColumn("± std", format="%.1f"),
            "reward_mean": st.column_config.NumberColumn("reward (mean)", format="%.1f"),
            "best_arm_share_last_10pct": st.column_config.NumberColumn(
                "best arm, last 10%", format="percent"
            ),
        },
    )
    st.altair_chart(charts.regret_chart(result.regret), width="stretch")
    st.altair_chart(charts.true_means_chart(result.true_means, result.arms), width="stretch")
    cols = st.columns(2)
    for k, name in enumerate(dict.fromkeys(result.summary["strategy"])):
        with cols[k % 2]:
            st.altair_chart(
                charts.selection_chart(result.selection, result.arms, str(name)), width="stretch"
            )
    with st.expander("Reproduce with `mab simulate`"):
        lines = [
            simulator.cli_command(cli_path, name, json.loads(params), result.runs, seed)
            for name, params in specs
        ]
        st.code("\n".join(lines), language="bash")
        st.download_button(
            "Download scenario JSON",
            scenario_text,
            file_name=cli_path.rsplit("/", 1)[-1],
            mime="application/json",
            key="sim_download",
        )


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

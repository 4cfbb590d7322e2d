"""The dashboard's simulator playground tab: scenarios in, strategies compared offline.

It runs :mod:`bandit_core.simulate`'s code in-process (see :mod:`dashboard.simulator`),
cached per input, with a work budget so the page stays responsive; it never calls the
API, so it works with the services down.
"""

from __future__ import annotations

import json
from typing import Any, Final

import pandas as pd
import streamlit as st

from bandit_core.simulate import Scenario, ScenarioError, load_scenario
from bandit_core.strategies import STRATEGIES
from dashboard import simulator
from dashboard.playground_charts import regret_chart, selection_chart, true_means_chart

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
    st.altair_chart(regret_chart(result.regret), width="stretch")
    st.altair_chart(true_means_chart(result.true_means, result.arms), width="stretch")
    cols = st.columns(2)
    for k, name in enumerate(dict.fromkeys(result.summary["strategy"])):
        with cols[k % 2]:
            st.altair_chart(
                selection_chart(result.selection, result.arms, str(name)),
                width="stretch",
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

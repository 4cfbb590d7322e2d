"""The experiment page's "Off-policy evaluation" section.

Pick a target strategy and params; the decider's ``GET /experiments/{id}/evaluate``
(never Kafka directly) estimates what it would have earned on the logged decisions.
Evaluating reads the event log, so it runs only when **Evaluate** is pressed (never on
the live panel's refresh tick) and results are kept in the session per request.
:func:`estimates_frame` and :func:`estimates_chart` are pure and unit-tested.
"""

from __future__ import annotations

import json
from typing import Any, Final

import altair as alt
import pandas as pd
import streamlit as st

from bandit_core.strategies import STRATEGIES
from dashboard.api import explain, show_failure
from dashboard.simulator import parse_params
from mab_client import Evaluation, MabClient, MabError

LABELS: Final = {
    "ips": "IPS",
    "snips": "SNIPS",
    "dr": "Doubly robust",
    "logged": "Logging policy (observed)",
}
RESULTS_KEY: Final = "ope_results"


def estimates_frame(result: Evaluation) -> pd.DataFrame:
    """One row per estimator (the three estimates, then the observed logging value)."""
    rows: list[dict[str, Any]] = []
    for e in [*result.estimates, result.logged]:
        rows.append(
            {
                "estimator": LABELS.get(e.estimator, e.estimator),
                "value": e.value,
                "ci_low": e.ci_low,
                "ci_high": e.ci_high,
                "std_error": e.std_error,
            }
        )
    return pd.DataFrame(rows, columns=["estimator", "value", "ci_low", "ci_high", "std_error"])


def estimates_chart(frame: pd.DataFrame, confidence: float) -> alt.LayerChart:
    """Each estimate with its confidence interval, on one reward axis."""
    data = frame.dropna(subset=["value"])
    y = alt.Y("estimator:N", sort=list(frame["estimator"]), title=None)
    bars = (
        alt.Chart(data)
        .mark_rule(strokeWidth=3)
        .encode(
            x=alt.X("ci_low:Q", title=f"expected reward per decision ({confidence:.0%} CI)"),
            x2="ci_high:Q",
            y=y,
        )
    )
    points = (
        alt.Chart(data)
        .mark_point(filled=True, size=90)
        .encode(
            x="value:Q",
            y=y,
            tooltip=[
                "estimator",
                alt.Tooltip("value:Q", format=".4f"),
                alt.Tooltip("ci_low:Q", format=".4f"),
                alt.Tooltip("ci_high:Q", format=".4f"),
            ],
        )
    )
    chart: alt.LayerChart = (bars + points).properties(title="Off-policy estimates", height=170)
    return chart


def render_offpolicy(client: MabClient, exp_id: str, current_strategy: str) -> None:
    """Target picker, the Evaluate button and the last result for this request."""
    st.subheader("Off-policy evaluation")
    st.caption(
        "What would another strategy have earned on the decisions this experiment logged? "
        "Estimated from the logged propensities (IPS, self-normalised IPS, doubly robust); "
        "the target decides from the same history the live policy saw. "
        "See docs/off-policy-evaluation.md."
    )
    names = list(STRATEGIES)
    default = next((i for i, n in enumerate(names) if n != current_strategy), 0)
    c1, c2, c3 = st.columns([2, 3, 1.6])
    strategy = c1.selectbox("Target strategy", names, index=default, key="ope_strategy")
    text = c2.text_input(
        "Params (JSON)", "{}", key=f"ope_params_{strategy}", help="Validated like the API."
    )
    missing = c3.radio(
        "Decisions without reward",
        ["drop", "zero"],
        horizontal=True,
        key="ope_missing",
        help="drop: storefronts report every outcome; zero: they report conversions only.",
    )
    try:
        params = parse_params(strategy, text)
    except ValueError as exc:
        st.error(str(exc))
        return
    request = (exp_id, strategy, json.dumps(params, sort_keys=True), missing)
    results: dict[tuple[str, str, str, str], Evaluation] = st.session_state.setdefault(
        RESULTS_KEY, {}
    )
    if st.button("Evaluate", type="primary", key="ope_run"):
        try:
            with st.spinner("Reading the event log and evaluating…"):
                results[request] = client.evaluate(exp_id, strategy, params, missing)
        except MabError as exc:
            not_found = f"Cannot evaluate: {explain(exc, client.base_url)}"
            show_failure(exc, client.base_url, "Evaluation failed", not_found)
            return
    result = results.get(request)
    if result is None:
        st.info("Pick a target strategy and press **Evaluate**.")
        return
    render_result(result)


def render_result(result: Evaluation) -> None:
    frame = estimates_frame(result)
    n = result.decisions_evaluated
    dr = next((e for e in result.estimates if e.estimator == "dr"), None)
    m = st.columns(4)
    m[0].metric(
        "Target (doubly robust)",
        "-" if dr is None or dr.value is None else f"{dr.value:.2%}",
        border=True,
    )
    logged = result.logged.value
    m[1].metric("Logged policy", "-" if logged is None else f"{logged:.2%}", border=True)
    m[2].metric(
        "Effective sample size",
        f"{result.ess:,.0f}",
        help=f"(Σw)²/Σw² of {n:,} evaluated decisions",
        border=True,
    )
    m[3].metric("Decisions evaluated", f"{n:,}", border=True)
    for warning in result.warnings:
        st.warning(warning)
    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(estimates_chart(frame, result.confidence), width="stretch")
    with right:
        st.dataframe(
            frame,
            hide_index=True,
            key="ope_table",
            column_config={
                "value": st.column_config.NumberColumn("estimate", format="%.4f"),
                "ci_low": st.column_config.NumberColumn("CI low", format="%.4f"),
                "ci_high": st.column_config.NumberColumn("CI high", format="%.4f"),
                "std_error": st.column_config.NumberColumn("std err", format="%.4f"),
            },
        )
    with st.expander("Support per arm"):
        st.dataframe(
            pd.DataFrame([a.model_dump() for a in result.arms]),
            hide_index=True,
            key="ope_arms",
            column_config={
                "logged_share": st.column_config.NumberColumn("served share", format="percent"),
                "target_share": st.column_config.NumberColumn("target share", format="percent"),
            },
        )
    params = json.dumps(result.strategy_params) if result.strategy_params else "defaults"
    st.caption(
        f"{result.strategy} ({params}) · {n:,} of {result.decisions_logged:,} logged "
        f"decisions · {result.decisions_without_reward:,} without reward "
        f"({result.missing_reward}) · computed in {result.elapsed_s:.1f} s"
        + (f" · most recent {result.max_decisions:,} only" if result.truncated else "")
    )

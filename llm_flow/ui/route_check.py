"""The Explorer's checks on the model itself: "Check this route" (route only, route removed,
random baselines, threshold curve) and "Remove this edge".

Each result costs forward passes, so it is computed only on a click and then kept with the Run
(shared by the sessions that show that Run, dropped with it) under the settings it was made
with: reruns for anything else, or coming back to the same settings, never recompute it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from functools import partial

import networkx as nx
import pandas as pd
import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.export import table_csv
from llm_flow.figures.route_check import route_check_figure, threshold_curve_figure
from llm_flow.interventions import RouteCheck, check_edge, check_route, threshold_curve
from llm_flow.models.run import Run
from llm_flow.routes.nodes import EdgeId
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import active_run
from llm_flow.views.tokens import display_token
from llm_flow.wording import probability

DRAWS = "check_draws"
SEED = "check_seed"
_DEFAULTS = {DRAWS: 20, SEED: 0}

_results: weakref.WeakKeyDictionary[Run, dict[tuple, object]] = weakref.WeakKeyDictionary()
_results_lock = threading.Lock()


@st.fragment
def route_check_panel(graph: nx.DiGraph) -> None:
    """ "Check this route": the route alone, the route removed and random parts of the same size.
    A fragment: its buttons and settings redraw this panel only (it fetches the Run rather than
    keeping it: see :func:`llm_flow.ui.frame.active_run`)."""
    run = active_run()
    for key, value in _DEFAULTS.items():
        st.session_state.setdefault(key, value)
    route = _route_key(graph)
    settings = (*route, st.session_state[DRAWS], st.session_state[SEED])
    check = _found(run, ("check", *settings))
    with st.expander("Check this route on the model", icon=":material/science:", expanded=check is not None):
        st.caption(
            "Re-runs the model keeping only the route's parts at the nodes it reaches (*route only*), and "
            "without the route's attention and FFN parts (*route removed*), against the same number of "
            "parts chosen at random. Two forward passes per random draw."
        )
        left, right = st.columns(2)
        left.number_input("Random draws", 1, 200, key=DRAWS, help="Random baselines of each kind; more draws, finer percentiles.")
        right.number_input("Seed", 0, 2**31 - 1, key=SEED, help="The same seed draws the same random parts.")
        clicked = st.button("Check this route", key="check_route_button", type="primary", icon=":material/play_arrow:")
        if check is None and clicked:
            draws = st.session_state[DRAWS]
            check = _compute(run, ("check", *settings), partial(check_route, run, graph, draws=draws,
                             seed=st.session_state[SEED]), f"Re-running the model {2 * draws + 2} times…")  # fmt: skip
        if isinstance(check, RouteCheck):
            _show_check(run, check)
            _curve_section(run, graph, route, check)


def edge_removal_panel(run: Run, graph: nx.DiGraph, edge: EdgeId) -> None:
    """ "Remove this edge": the target token's probability with this edge's parts taken out."""
    key = ("edge", *_route_key(graph), str(edge))
    result = _found(run, key)
    clicked = st.button(
        "Remove this edge", key="check_edge_button", icon=":material/content_cut:",
        help="Re-run the model without this edge's parts (all its heads; the FFN for an FFN edge; the residual "
             "stream for a residual edge or a token's own edge) and see the prediction change.",
    )  # fmt: skip
    if result is None and clicked:
        result = _compute(run, key, partial(check_edge, run, graph, *edge.pair), "Re-running the model…")
    if result is None:
        return
    before, after = result.unmodified, result.removed
    st.metric(
        f"p({display_token(result.token)!r}) without this edge", probability(after.probability),
        delta=f"{100 * (after.probability - before.probability):+.2f} points", delta_color="normal",
    )  # fmt: skip
    st.caption(
        f"{result.n_parts:,} parts removed. Before: p = {probability(before.probability)}, rank {before.rank}, "
        f"logit {before.logit:.2f}. After: rank {after.rank}, logit {after.logit:.2f}."
    )


def _show_check(run: Run, check: RouteCheck) -> None:
    st.dataframe(_display_table(check), hide_index=True, width="stretch", key="check_result_table")
    token = display_token(check.token)
    st.markdown(
        f"The route alone gives {token!r} a higher probability than **{check.only_percentile:.0f}%** of random routes "
        f"of its size ({check.n_route_parts:,} attention and FFN parts); removing it leaves a lower probability than "
        f"**{100 - check.removed_percentile:.0f}%** of random removals of that size."
    )
    figure = route_check_figure(check)
    st.plotly_chart(figure, width="stretch", key="check_result_chart", config={"displaylogo": False})
    stem = f"route-check-{run.model.name}-token{check.position}-t{check.threshold:g}"
    figure_downloads(figure, f"Route check · {run.model.name} · p({check.token!r})", stem, key="check_result")
    st.download_button(
        "Every pass as CSV", data=partial(table_csv, check.draws_table()), file_name=f"{safe_stem(stem)}.csv",
        mime="text/csv", key="check_passes_button", width="stretch", on_click="ignore",
    )  # fmt: skip


def _display_table(check: RouteCheck) -> pd.DataFrame:
    """The check's table as a reader wants it: short numbers, and how each route result compares
    with its random draws in words."""
    table = check.table()
    n_draws = len(check.random_only)
    versus = []
    for row in table.itertuples():
        if row.condition == "route only":
            versus.append(f"above {row.percentile:.0f}% of the draws")
        elif row.condition == "route removed":
            versus.append(f"below {100 - row.percentile:.0f}% of the draws")
        elif not pd.isna(row.low):
            versus.append(f"{n_draws} draws: {row.low:.2g} … {row.high:.2g}")
        else:
            versus.append("")
    return pd.DataFrame({
        "condition": table["condition"],
        "probability": [probability(p) for p in table["probability"]],
        "logit": [f"{v:.2f}" for v in table["logit"]],
        "rank": [f"{r:,.0f}" for r in table["rank"]],
        "against random": versus,
    })  # fmt: skip


def _curve_section(run: Run, graph: nx.DiGraph, route: tuple, check: RouteCheck) -> None:
    """How small can the route be? Route only at thresholds 0.01..0.2 (one pass each)."""
    key = ("curve", *route)
    curve = _found(run, key)
    clicked = st.button("Threshold curve", key="check_curve_button", icon=":material/show_chart:",
                        help="Route only at thresholds from 0.01 to 0.2: one forward pass per threshold.")  # fmt: skip
    if curve is None and clicked:
        curve = _compute(run, key, partial(threshold_curve, run, graph, token=check.token_id), "Building routes…")
    if not isinstance(curve, pd.DataFrame):
        return
    figure = threshold_curve_figure(curve, unmodified=check.unmodified.probability)
    st.plotly_chart(figure, width="stretch", key="check_curve_chart", config={"displaylogo": False})
    figure_downloads(figure, f"Route only by threshold · {run.model.name} · p({check.token!r})",
                     f"route-curve-{run.model.name}-token{check.position}", key="check_curve")  # fmt: skip
    st.dataframe(
        curve, hide_index=True, width="stretch", key="check_curve_table",
        column_config={"probability": st.column_config.NumberColumn(format="%.3g"),
                       "logit": st.column_config.NumberColumn(format="%.2f")},
    )  # fmt: skip


def _route_key(graph: nx.DiGraph) -> tuple:
    attrs = graph.graph
    return attrs["target"], attrs["threshold"], attrs["renormalize"]


def _found(run: Run, key: tuple) -> object | None:
    with _results_lock:
        return _results.get(run, {}).get(key)


def _compute(run: Run, key: tuple, compute: Callable[[], object], message: str) -> object | None:
    """Compute once and keep with the run; a refused request shows its reason instead."""
    try:
        with st.spinner(message):
            result = compute()
    except LlmFlowError as exc:
        st.error(str(exc))
        return None
    with _results_lock:
        _results.setdefault(run, {})[key] = result
    return result

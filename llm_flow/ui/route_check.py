"""The Explorer's checks on the model itself: "Check this route" (route only, route removed,
random baselines, threshold curve) and "Remove this edge".

Each result costs forward passes, so it is computed only on a click and then kept in the Run's
derived store (shared by the sessions that show that Run, counted in its bytes, dropped with it)
under the settings it was made with: reruns for anything else, or coming back to the same
settings, never recompute it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import networkx as nx
import pandas as pd
import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.export import table_csv
from llm_flow.figures.route_check import route_check_figure, threshold_curve_figure
from llm_flow.interventions import RouteCheck, check_edge, check_route, threshold_curve
from llm_flow.models.run import Run
from llm_flow.routes.graph import RouteOf
from llm_flow.routes.nodes import EdgeId
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import active_run, sync_link
from llm_flow.ui.long_work import Progress, cancellable
from llm_flow.ui.state import bind, get_state
from llm_flow.views.tokens import display_token
from llm_flow.wording import plural, probability

# Keys of the panel's results in the Run's derived store: the route's settings and their own.


@dataclass(frozen=True)
class CurveOf(RouteOf):
    """The threshold curve that starts from a route."""


@dataclass(frozen=True)
class CheckOf(RouteOf):
    """A route's check, with the draws and seed of its random baselines."""

    draws: int
    seed: int


@dataclass(frozen=True)
class EdgeRemovalOf(RouteOf):
    """The removal of one edge ("source->dest") of a route."""

    edge: str


@st.fragment
def route_check_panel(graph: nx.DiGraph) -> None:
    """ "Check this route": the route alone, the route removed and random parts of the same size.
    A fragment: its buttons and settings redraw this panel only (it fetches the Run rather than
    keeping it: see :func:`llm_flow.ui.frame.active_run`). Results are shared with every session
    showing this Run; whether one is shown is this session's own choice."""
    run = active_run()
    state = get_state().check
    route = _route_key(graph)
    settings = (*route, state.draws, state.seed)
    if (state.pending == "check" or (state.shown and not state.asked)) and settings not in state.asked:
        state.asked = (*state.asked, settings)  # a click, or a link that opens with the check
    if state.pending == "check":
        state.pending = None
    state.shown = settings in state.asked
    previous = _previous_check(run, state, route) if not state.shown else None
    # open while this session works on this route's checks (a new draw count must not fold it away)
    opened = state.shown or previous is not None or any(asked[:3] == route for asked in state.asked)
    with st.expander("Check this route on the model", icon=":material/science:", expanded=opened):
        st.caption(
            "Re-runs the model keeping only the route's parts at the nodes it reaches (*route only*), and "
            "without the route's attention and FFN parts (*route removed*), against the same number of "
            "parts chosen at random. Two forward passes per random draw."
        )
        left, right = st.columns(2)
        left.number_input("Random draws", 1, 200, help="Random baselines of each kind; more draws, finer percentiles.",
                          **bind("check.draws"))  # fmt: skip
        right.number_input("Seed", 0, 2**31 - 1, help="The same seed draws the same random parts.", **bind("check.seed"))
        st.button("Check this route", key="check_route_button", type="primary", icon=":material/play_arrow:",
                  on_click=_ask, args=("check",))  # fmt: skip
        _say_cancelled(state)
        check = previous
        if state.shown:
            draws, seed = state.draws, state.seed
            check = _found(run, CheckOf(*settings)) or _compute(run, CheckOf(*settings), lambda progress: check_route(
                run, graph, draws=draws, seed=seed, progress=progress), "Re-running the model", "check")  # fmt: skip
        elif previous is not None:
            st.caption(f"Below: the previous check of this route ({plural(len(previous.random_only), 'random draw')}, "
                       f"seed {previous.seed}).")  # fmt: skip
        if isinstance(check, RouteCheck):
            _show_check(run, check)
            _curve_section(run, graph, route, check)
    sync_link()


def edge_removal_panel(run: Run, graph: nx.DiGraph, edge: EdgeId) -> None:
    """ "Remove this edge": the target token's probability with this edge's parts taken out."""
    state = get_state().check
    key = EdgeRemovalOf(*_route_key(graph), str(edge))
    st.button(
        "Remove this edge", key="check_edge_button", icon=":material/content_cut:", on_click=_ask_edge, args=(str(edge),),
        help="Re-run the model without this edge's parts (all its heads; the FFN for an FFN edge; the residual "
             "stream for a residual edge or a token's own edge) and see the prediction change.",
    )  # fmt: skip
    if state.edge != str(edge):
        return
    result = _found(run, key)
    if result is None:
        result = _compute(run, key, lambda progress: check_edge(run, graph, *edge.pair), "Re-running the model", "edge")
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


def _previous_check(run: Run, state, route: tuple) -> RouteCheck | None:
    """After a Cancel, the check of this route that was on screen before, if any."""
    if not state.cancelled or not state.asked or state.asked[-1][:3] != route:
        return None
    return _found(run, CheckOf(*state.asked[-1]))


def _ask(what: str) -> None:
    state = get_state().check
    state.pending, state.cancelled = what, None


def _ask_edge(edge: str) -> None:
    state = get_state().check
    state.edge, state.cancelled = edge, None


def _cancel(what: str) -> None:
    """Cancel: the request is withdrawn (not restarted by the next run)."""
    state = get_state().check
    if what == "edge":
        state.edge = None
    elif what == "check":
        state.shown, state.asked = False, state.asked[:-1]
    else:
        state.curve, state.curves = False, state.curves[:-1]
    state.pending = None
    state.cancelled = {"check": "The route check", "curve": "The threshold curve", "edge": "Removing the edge"}[what]


def _say_cancelled(state) -> None:
    if state.cancelled:
        st.info(f"{state.cancelled} was cancelled; nothing else changed.")


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
    key = CurveOf(*route)
    state = get_state().check
    st.button("Threshold curve", key="check_curve_button", icon=":material/show_chart:", on_click=_ask, args=("curve",),
              help="Route only at thresholds from 0.01 to 0.2: one forward pass per threshold.")  # fmt: skip
    if (state.pending == "curve" or (state.curve and not state.curves)) and route not in state.curves:
        state.curves = (*state.curves, route)
    state.pending = None
    state.curve = route in state.curves
    curve = _found(run, key) if state.curve else None
    if state.curve and curve is None:
        curve = _compute(run, key, lambda progress: threshold_curve(run, graph, token=check.token_id, progress=progress),
                         "Route only by threshold", "curve")  # fmt: skip
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


def _found(run: Run, key: RouteOf) -> object | None:
    return run.derived_store.peek(key)


def _compute(run: Run, key: RouteOf, compute: Callable[[Progress], object], label: str, what: str) -> object | None:
    """Compute once (with progress and Cancel) and keep with the run; a refused request shows
    its reason instead, and is not asked again until the user clicks."""
    try:
        result = cancellable(compute, label, key=f"check_{what}", on_cancel=lambda: _cancel(what))
    except LlmFlowError as exc:
        st.error(str(exc))
        _cancel(what)
        get_state().check.cancelled = None
        return None
    return run.derived(key, lambda: result)

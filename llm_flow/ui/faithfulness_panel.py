"""The Explorer's faithfulness check, the field's way (MIB, EAP-IG): ablate every edge outside
the route into its destination node and see how much of answer − foil is left; budget curves
of each scorer with CPR and CMD; the smallest route that keeps a target share; the graph drawn
from EAP-IG's scores instead of ALTI's; and the counterfactual prompt's own route beside this
one. Every number comes from :mod:`llm_flow.faithfulness`; results are kept with the Run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from llm_flow.errors import ArgumentError, LlmFlowError
from llm_flow.faithfulness import AblationSpec, budget_curve, faithfulness, get_scorer, prepare, smallest_circuit, top_k
from llm_flow.faithfulness.drawing import circuit_graph
from llm_flow.faithfulness.settings import SCORER_NAMES
from llm_flow.figures.route import route_figure
from llm_flow.models.run import Run
from llm_flow.routes.graph import RouteOf, shared_graph
from llm_flow.ui.downloads import figure_downloads
from llm_flow.ui.frame import active_run, sync_link
from llm_flow.ui.long_work import cancellable
from llm_flow.ui.resources import get_run
from llm_flow.ui.state import FaithState, bind, get_state
from llm_flow.validation import check_threshold
from llm_flow.views.tokens import display_token

_LABELS = {"alti": "ALTI route", "eap": "EAP", "eap-ig": "EAP-IG", "random": "random"}


@dataclass(frozen=True)
class FaithOf(RouteOf):
    """Key of a measurement in the Run's derived store: the route and every setting it used."""

    ablation: str
    counterfactual: str
    answer: str
    foil: str
    metric: str
    scorers: tuple[str, ...]
    target_f: float


@dataclass(frozen=True)
class Measurement:
    problem: object  # llm_flow.faithfulness.Problem
    route: object  # Faithfulness of the route on screen
    curves: dict = field(default_factory=dict)  # scorer -> BudgetCurve
    scores: dict = field(default_factory=dict)  # scorer -> edge scores [n]
    smallest: object = None  # SmallestCircuit of the ALTI route at the target f


def contrast_defaults(run: Run, position: int, state: FaithState) -> tuple[str, str]:
    """The answer and foil the check reads: what the user typed, else the model's top
    prediction and, as foil, the counterfactual's top prediction (patching) or the runner-up;
    only tokens that read back as themselves (a lone byte of a character does not)."""
    answer = state.answer or _typable(run, run.position_logits(position))[0]
    foil = state.foil
    if not foil and state.ablation == "patching" and state.counterfactual.strip():
        other = _counterfactual_run(state.counterfactual)
        if other is not None and other.n_tokens > position:
            foil = next((t for t in _typable(other, other.position_logits(position)) if t != answer), "")
    return answer, foil or next(t for t in _typable(run, run.position_logits(position)) if t != answer)


def _typable(run: Run, logits: torch.Tensor, count: int = 3) -> list[str]:
    """The `count` most likely next tokens that, typed as text, are that very token again."""
    found = []
    for token_id in torch.argsort(logits.float(), descending=True)[:50].tolist():
        text = run.model.decode_tokens([token_id])[0]
        if run.model.tokenizer(text, add_special_tokens=False)["input_ids"] == [token_id]:
            found.append(text)
            if len(found) == count:
                break
    return found


@st.fragment
def faithfulness_panel(graph: nx.DiGraph) -> None:
    """The check of the route `graph` on screen (a fragment: its settings redraw this panel)."""
    run = active_run()
    state = get_state().faith
    position, threshold, renormalize = graph.graph["target"], graph.graph["threshold"], graph.graph["renormalize"]
    answer, foil = contrast_defaults(run, position, state)
    key = _key(state, position, threshold, renormalize, answer, foil)
    if (state.pending or (state.shown and not state.asked)) and key not in state.asked:
        state.asked = (*state.asked, key)
    state.pending = False
    state.shown = key in state.asked
    with st.expander("Is this route faithful? Ablate everything else", icon=":material/rule:", expanded=state.shown):
        st.caption(
            "As circuit benchmarks (MIB) measure it: every edge outside the route is replaced in its destination "
            "node (by zero, by its mean over reference prompts, or by its value on a counterfactual prompt), and "
            "f = (m(route) − m(nothing)) / (m(model) − m(nothing)) with m = logit(answer) − logit(foil). "
            "f = 1: the route carries the prediction; completeness = f of everything but the route (near 0: nothing "
            "else matters). Each budget curve point is one forward pass."
        )
        _controls(run, state, answer, foil)
        if state.cancelled:
            st.info("The measurement was cancelled; nothing else changed.")
        measurement = run.derived_store.peek(key) if state.shown else None
        if state.shown and measurement is None:
            measurement = _measure(run, graph, key)
        if measurement is not None:
            _show(run, graph, measurement, state, key)
        if state.compare:
            _compare(run, graph, state)
    sync_link()


def drawn_graph(run: Run, graph: nx.DiGraph) -> tuple[nx.DiGraph, str | None]:
    """The graph the Explorer draws: the ALTI route, or, when *Score edges by: EAP-IG* is on and
    EAP-IG was measured for this route, EAP-IG's top edges, as many as the route keeps; with a
    note saying which."""
    state = get_state().faith
    if state.score_by != "eap-ig":
        return graph, None
    position = graph.graph["target"]
    answer, foil = contrast_defaults(run, position, state)
    key = _key(state, position, graph.graph["threshold"], graph.graph["renormalize"], answer, foil)
    measurement = run.derived_store.peek(key)
    if measurement is None or "eap-ig" not in measurement.scores:
        return graph, "Edges are scored by ALTI: measure faithfulness with EAP-IG among the scorers to draw its edges."
    problem, scores = measurement.problem, measurement.scores["eap-ig"]
    count = int(problem.circuit(graph).sum())
    drawn = circuit_graph(problem, top_k(scores, count), scores, "eap-ig")
    return drawn, (f"Edges scored by EAP-IG: its top {count:,} edges (as many as the ALTI route keeps), thickness "
                   "= |score| relative to the largest; only those that reach the explained token are drawn.")  # fmt: skip


# --- settings -----------------------------------------------------------------------------------


def _controls(run: Run, state: FaithState, answer: str, foil: str) -> None:
    top = st.columns([2, 3])
    top[0].radio("Ablate with", ["zero", "mean", "patching"], horizontal=True, **bind("faith.ablation"),
                 format_func={"zero": "zero", "mean": "mean", "patching": "counterfactual"}.get,
                 help="zero: the strict variant; mean: over the sample prose prompts; counterfactual: patching, "
                      "the field's default (MIB, EAP-IG).")  # fmt: skip
    top[1].text_input("Counterfactual prompt", disabled=state.ablation != "patching", **bind("faith.counterfactual"),
                      placeholder="same number of tokens, e.g. 'The capital of Italy is'")  # fmt: skip
    row = st.columns([2, 2, 2, 3])
    row[0].text_input("Answer", placeholder=repr(answer), **bind("faith.answer"), help="One token; empty: the top prediction.")
    row[1].text_input("Foil", placeholder=repr(foil), **bind("faith.foil"),
                      help="One token; empty: the counterfactual's top prediction, else the runner-up.")  # fmt: skip
    row[2].number_input("Target f", 0.05, 1.0, step=0.05, **bind("faith.target"),
                        help="Smallest route with f at least this.")  # fmt: skip
    row[3].multiselect("Budget curves of", list(SCORER_NAMES), format_func=_LABELS.get,
                       **bind("faith.scorers", to_widget=_scorer_list, from_widget=",".join))  # fmt: skip
    left, right = st.columns([1, 3], vertical_alignment="center")
    left.button("Measure", key="faith_measure_button", type="primary", icon=":material/play_arrow:", on_click=_ask)
    right.toggle("Compare with the counterfactual's route", disabled=state.ablation != "patching", **bind("faith.compare"),
                 help="The counterfactual prompt's own route at this token and threshold, beside this one.")  # fmt: skip


def _scorer_list(text: str) -> list[str]:
    return [name for name in text.split(",") if name in SCORER_NAMES]


def _ask() -> None:
    state = get_state().faith
    state.pending, state.cancelled = True, False


def _cancel() -> None:
    state = get_state().faith
    state.shown, state.asked, state.cancelled = False, state.asked[:-1], True


def _key(state: FaithState, position: int, threshold: float, renormalize: bool, answer: str, foil: str) -> FaithOf:
    counterfactual = state.counterfactual if state.ablation == "patching" else ""
    return FaithOf(position, threshold, renormalize, state.ablation, counterfactual, answer, foil, state.metric,
                   tuple(_scorer_list(state.scorers)), float(state.target))  # fmt: skip


# --- computing ----------------------------------------------------------------------------------


def _measure(run: Run, graph: nx.DiGraph, key: FaithOf) -> Measurement | None:
    try:
        spec = AblationSpec(key.ablation, counterfactual=key.counterfactual or None)
        scorers = [get_scorer(name) for name in key.scorers]
        passes = 3 + len(scorers) * (1 + 2 * 10) + 24  # f of the route; per scorer its scores and curve; the search
        result = cancellable(lambda progress: _compute(run, graph, key, spec, scorers, progress, passes),
                             "Measuring faithfulness", key="faith", on_cancel=_cancel)  # fmt: skip
    except LlmFlowError as exc:
        st.error(str(exc))
        state = get_state().faith
        state.shown, state.asked = False, state.asked[:-1]
        return None
    return run.derived(key, lambda: result)


def _compute(run: Run, graph: nx.DiGraph, key: FaithOf, spec, scorers, progress, passes: int) -> Measurement:
    done = [0]

    def step(count: int = 1) -> None:
        done[0] += count
        progress(min(done[0], passes), passes)

    problem = prepare(run, key.answer, key.foil, spec, key.metric, key.target)
    route = faithfulness(problem, graph)
    step(3)
    curves, scores = {}, {}
    for scorer in scorers:
        scores[scorer.key] = scorer.scores(problem)
        step()
        curves[scorer.key] = budget_curve(problem, scorer, scores=scores[scorer.key],
                                          progress=lambda d, t: progress(min(done[0] + d, passes), passes))  # fmt: skip
        step(2 * 10)
    smallest = smallest_circuit(problem, get_scorer("alti"), key.target_f)
    return Measurement(problem, route, curves, scores, smallest)


# --- showing ------------------------------------------------------------------------------------


def _show(run: Run, graph: nx.DiGraph, measurement: Measurement, state: FaithState, key: FaithOf) -> None:
    route, problem = measurement.route, measurement.problem
    contrast = f"{display_token(key.answer)!r} vs {display_token(key.foil)!r}"
    left, middle, right = st.columns(3)
    left.metric("f of this route", f"{route.faithfulness:.3f}",
                help=f"{route.edges:,} of the full graph's {route.total:,} edges.")  # fmt: skip
    middle.metric("completeness", f"{route.completeness:.3f}", help="f of every edge but the route's: near 0 is best.")
    right.metric("m(model) / m(nothing)", f"{route.full:.2f} / {route.empty:.2f}",
                 help="The metric with nothing ablated, and with every edge ablated.")  # fmt: skip
    if measurement.curves:
        figure = curves_figure(measurement.curves)
        st.plotly_chart(figure, width="stretch", key="faith_curves_chart", config={"displaylogo": False})
        st.dataframe(curves_table(measurement.curves), hide_index=True, width="stretch", key="faith_curves_table")
        figure_downloads(figure, f"Faithfulness by edge budget · {run.model.name} · {contrast}",
                         f"faithfulness-{run.model.name}-token{problem.contrast.position}", key="faith_curves")  # fmt: skip
    smallest = measurement.smallest
    if smallest is not None:
        try:
            threshold = check_threshold(round(float(smallest.threshold), 3))
        except ArgumentError:
            threshold = None
        text = (f"**Smallest route with f ≥ {state.target:g}**: {smallest.edges:,} edges ({smallest.fraction:.1%} of "
                f"the full graph), f = {smallest.faithfulness:.3f}")  # fmt: skip
        on_screen = threshold == graph.graph["threshold"] and not graph.graph["renormalize"]
        if threshold is not None and not on_screen:
            st.markdown(f"{text}: the route at threshold {threshold:g}, not renormalised.")
            if st.button(f"Show that route (threshold {threshold:g})", key="faith_smallest_button", icon=":material/tune:"):
                route_state = get_state().route
                route_state.threshold, route_state.renormalize = threshold, False
                st.rerun(scope="app")  # the graph and the sidebar are drawn outside this panel
        elif threshold is not None:
            st.markdown(f"{text}: the route on screen.")
        else:
            st.markdown(f"{text}; its threshold {smallest.threshold:.2g} is outside what the app offers (0.001–0.5).")


def curves_figure(curves: dict) -> go.Figure:
    """f against the edge budget, one line per scorer (a log axis: budgets go from 0.1 % to 100 %)."""
    figure = go.Figure()
    for name, curve in curves.items():
        figure.add_trace(go.Scatter(
            x=[100 * b for b in curve.budgets], y=list(curve.faithfulness), mode="lines+markers", name=_LABELS[name],
            customdata=list(curve.edges), hovertemplate="%{x}% of edges (%{customdata})<br>f = %{y:.3f}<extra></extra>",
        ))  # fmt: skip
    figure.add_hline(y=1.0, line_dash="dot", line_color="#888")
    figure.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="edges kept (% of the full graph)",
                         yaxis_title="f", xaxis_type="log", legend=dict(orientation="h", y=1.1))  # fmt: skip
    return figure


def curves_table(curves: dict) -> pd.DataFrame:
    rows = []
    for name, curve in curves.items():
        row = {"scorer": _LABELS[name], "CPR (higher better)": curve.cpr, "CMD (lower better)": curve.cmd}
        for budget in (0.01, 0.05):
            if budget in curve.budgets:
                row[f"f at {budget:.0%}"] = curve.at(budget)
        rows.append(row)
    return pd.DataFrame(rows).round(3)


def _compare(run: Run, graph: nx.DiGraph, state: FaithState) -> None:
    """The counterfactual prompt's route at the same token and settings, beside this one, and
    the edges only one of them has."""
    other = _counterfactual_run(state.counterfactual)
    position = graph.graph["target"]
    if other is None or other.n_tokens <= position:
        st.warning("Type a counterfactual prompt (as long as this one, in tokens) to compare the two routes.")
        return
    theirs = shared_graph(other, position, graph.graph["threshold"], graph.graph["renormalize"])
    ours, their_edges = set(graph.edges), set(theirs.edges)
    left, right = st.columns(2)
    left.caption(f"This prompt: {graph.number_of_edges()} edges")
    left.plotly_chart(route_figure(graph, compact=True), width="stretch", key="faith_compare_ours_chart")
    right.caption(f"{other.prompt!r}: {theirs.number_of_edges()} edges")
    right.plotly_chart(route_figure(theirs, compact=True), width="stretch", key="faith_compare_theirs_chart")
    only = [(f"{u} → {v}", "this prompt") for u, v in sorted(ours - their_edges)]
    only += [(f"{u} → {v}", "the counterfactual") for u, v in sorted(their_edges - ours)]
    st.caption(f"{len(ours & their_edges)} edges in both; {len(ours - their_edges)} only here, "
               f"{len(their_edges - ours)} only in the counterfactual's route.")  # fmt: skip
    st.dataframe(pd.DataFrame(only, columns=["edge", "only in the route of"]), hide_index=True, width="stretch",
                 key="faith_compare_table")  # fmt: skip


def _counterfactual_run(text: str) -> Run | None:
    """The counterfactual prompt's Run on the active model, from the shared cache (None if it
    cannot be analysed: the check itself then says why)."""
    if not text.strip():
        return None
    active = get_state().source.active
    try:
        return get_run(active.model, text)
    except LlmFlowError:
        return None

"""The explorer page: the route graph for one token, and panels for what was clicked."""

from __future__ import annotations

from functools import partial

import networkx as nx
import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.export import route_title
from llm_flow.figures.route import figure_height, route_figure
from llm_flow.models.run import Run
from llm_flow.routes.graph import graph_json, shared_graph
from llm_flow.routes.find import NodeSearch, find_nodes
from llm_flow.routes.nodes import EDGE_SEPARATOR, NodeId
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import Analysis
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.seq2seq_explorer import pair_explorer
from llm_flow.ui.analysis import COMPACT_FROM_TOKENS
from llm_flow.ui.panels import describe, element_panel, predictions_panel
from llm_flow.ui.faithfulness_panel import drawn_graph, faithfulness_panel
from llm_flow.faithfulness.problem import NO_FAITHFULNESS
from llm_flow.ui.route_check import route_check_panel
from llm_flow.ui.state import bind, get_state
from llm_flow.ui.widgets import clicked_element, token_slider
from llm_flow.views.tokens import display_token

CHART = "explorer_route_chart"  # the plotly chart's selection state (Streamlit's own)



def explorer_page(analysis: Analysis) -> None:
    run = analysis.run
    if run is None:
        st.info("Choose a model and a prompt in the sidebar to begin.")
        return
    if isinstance(run, Seq2SeqRun):
        pair_explorer(run, analysis.threshold, analysis.renormalize)
        return
    state = get_state()
    token_slider(run, "Token to explain", help="The route explains the model's prediction of the token that follows this one.")
    position = state.route.position
    try:
        with st.spinner("Building the route…"):
            graph = shared_graph(run, position, analysis.threshold, analysis.renormalize)  # kept with the Run
    except LlmFlowError as exc:
        st.error(str(exc))
        return
    elements = [None, *sorted(graph.nodes, key=_node_order), *(f"{u}{EDGE_SEPARATOR}{v}" for u, v in graph.edges)]
    if state.route.selected not in elements:
        st.warning(f"{state.route.selected} is not on this route; nothing is selected.")
        state.route.selected = None
    automatic = run.n_tokens > COMPACT_FROM_TOKENS  # until the user chooses, by the prompt's length
    compact = automatic if state.explorer.compact is None else state.explorer.compact
    search = _search(graph)  # before the figure: a found node is selected and centred
    graph_column, panel_column = st.columns([3, 2], gap="medium")
    with graph_column:
        st.caption(
            f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges for token {position} "
            f"{display_token(run.str_tokens[position])!r}. Drag to pan, scroll to zoom, double-click to reset."
        )
        st.toggle(
            "Only the tokens the route reaches", **bind("explorer.compact", to_widget=lambda _: compact),
            help="Leave out the token columns with no node on the route: long prompts stay readable.",
        )  # fmt: skip
        faithfulness = not run.model.info.bidirectional  # EAP-IG scores a decoder's causal edges
        if faithfulness:
            st.radio(
                "Score edges by", ["alti", "eap-ig"], format_func={"alti": "ALTI contributions", "eap-ig": "EAP-IG"}.get,
                horizontal=True, **bind("faith.score_by"),
                help="EAP-IG draws its own top edges, as many as the route keeps (measured under *Is this route faithful?*).",
            )  # fmt: skip
        drawn, note = drawn_graph(run, graph) if faithfulness else (graph, None)
        if note:
            st.caption(note)
        focus = state.explorer.focus
        figure = route_figure(drawn, state.route.selected if drawn is graph else None, compact=compact,
                              focus=focus if focus in drawn else None)
        st.plotly_chart(
            figure, key=CHART,
            on_select=_on_graph_click, selection_mode="points", width="stretch",
            height=figure_height(graph), config={"scrollZoom": True, "displaylogo": False},
        )  # fmt: skip
        _find_box(graph, search)
        _exports(run, graph, compact, focus)
        route_check_panel(graph)
        if faithfulness:
            faithfulness_panel(graph)
        else:
            st.caption(f"No faithfulness check on this model: {NO_FAITHFULNESS}.")
    with panel_column:
        predictions_panel(position)
        st.selectbox(
            "Inspect", elements, placeholder="Click the graph, or choose a node or edge",
            format_func=lambda e: "(nothing)" if e is None else describe(graph, e), **bind("route.selected"),
        )  # fmt: skip
        element_panel(graph, state.route.selected)


def _search(graph: nx.DiGraph) -> NodeSearch | str | None:
    """What the *Find a node* box asks for on this route: the matches (the chosen one selected
    and centred), a message when the query is malformed, or None when the box is empty."""
    state = get_state()
    explorer = state.explorer
    if not explorer.find.strip():
        explorer.focus = None
        return None
    try:
        search = find_nodes(graph, explorer.find)
    except LlmFlowError as exc:
        explorer.focus = None
        return str(exc)
    if explorer.focus not in search.nodes:
        explorer.focus = search.nodes[0] if search.nodes else None
        if explorer.focus is not None:
            state.route.selected = explorer.focus
    return search


def _find_box(graph: nx.DiGraph, search: NodeSearch | str | None) -> None:
    left, right = st.columns([2, 3], vertical_alignment="bottom")
    left.text_input(
        "Find a node", placeholder="token, position (7), layer (L12) or node (A12_4)", **bind("explorer.find"),
        help="Selects the node and centres the graph on it. Clear the box to see the whole route again.",
    )  # fmt: skip
    if isinstance(search, str):
        right.error(search)
    elif search is not None and not search.nodes:
        right.warning(search.message)
    elif search is not None:
        right.selectbox(
            search.message, search.nodes, format_func=lambda name: describe(graph, name),
            **bind("explorer.focus", then=_select_focus),
        )  # fmt: skip


def _select_focus() -> None:
    """Choosing another match selects it too (the panel shows what it did)."""
    state = get_state()
    state.route.selected = state.explorer.focus


def _exports(run: Run, graph: nx.DiGraph, compact: bool, focus: str | None) -> None:
    """The route as files: the figure (without the selection mark) and the graph as JSON."""
    target = graph.graph["target"]
    with st.popover("Export", icon=":material/download:"):
        title = route_title(run.model.name, run.prompt, run.str_tokens[target], target,
                            graph.graph["threshold"], graph.graph["renormalize"])  # fmt: skip
        stem = f"route-{run.model.name}-token{target}-t{graph.graph['threshold']:g}"
        figure_downloads(route_figure(graph, compact=compact, focus=focus), title, stem, key="explorer_export")
        st.download_button(
            "Graph as JSON (node-link)", data=partial(graph_json, graph), file_name=f"{safe_stem(stem)}.json",
            mime="application/json", key="explorer_export_json_button", width="stretch", on_click="ignore",
        )  # fmt: skip
        st.caption("Tables: the download icon at the top right of each table saves it as CSV.")


def _on_graph_click() -> None:
    """A click on a node or an edge marker selects it, exactly as choosing it under Inspect."""
    element = clicked_element(st.session_state.get(CHART))
    if element is not None:
        get_state().route.selected = element


def _node_order(name: str) -> tuple[int, int, str]:
    node = NodeId.parse(name)
    return (-node.layer, node.position, node.kind)

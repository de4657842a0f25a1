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
from llm_flow.routes.nodes import EDGE_SEPARATOR, NodeId
from llm_flow.ui import keys
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import Analysis
from llm_flow.ui.panels import describe, element_panel, predictions_panel
from llm_flow.ui.route_check import route_check_panel
from llm_flow.ui.widgets import token_slider
from llm_flow.views.tokens import display_token


def explorer_page(analysis: Analysis) -> None:
    run = analysis.run
    if run is None:
        st.info("Choose a model and a prompt in the sidebar to begin.")
        return
    token_slider(run, "Token to explain", help="The route explains the model's prediction of the token that follows this one.")
    target = st.session_state[keys.TARGET]
    try:
        with st.spinner("Building the route…"):
            graph = shared_graph(run, target, analysis.threshold, analysis.renormalize)  # kept with the Run
    except LlmFlowError as exc:
        st.error(str(exc))
        return
    elements = [None, *sorted(graph.nodes, key=_node_order), *(f"{u}{EDGE_SEPARATOR}{v}" for u, v in graph.edges)]
    if st.session_state[keys.SELECTED] not in elements:
        if st.session_state[keys.SELECTED] is not None:
            st.warning(f"{st.session_state[keys.SELECTED]} is not on this route; nothing is selected.")
        st.session_state[keys.SELECTED] = None
    graph_column, panel_column = st.columns([3, 2], gap="medium")
    with graph_column:
        st.caption(
            f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges for token {target} "
            f"{display_token(run.str_tokens[target])!r}. Drag to pan, scroll to zoom, double-click to reset."
        )
        st.toggle(
            "Only the tokens the route reaches", key=keys.COMPACT,
            help="Leave out the token columns with no node on the route: long prompts stay readable.",
        )  # fmt: skip
        figure = route_figure(graph, st.session_state[keys.SELECTED], compact=st.session_state[keys.COMPACT])
        st.plotly_chart(
            figure, key=keys.CHART,
            on_select=_on_graph_click, selection_mode="points", width="stretch",
            height=figure_height(graph), config={"scrollZoom": True, "displaylogo": False},
        )  # fmt: skip
        _exports(run, graph)
        route_check_panel(graph)
    with panel_column:
        predictions_panel(target)
        st.selectbox(
            "Inspect", elements, key=keys.SELECTED, placeholder="Click the graph, or choose a node or edge",
            format_func=lambda e: "(nothing)" if e is None else describe(graph, e),
        )  # fmt: skip
        element_panel(graph, st.session_state[keys.SELECTED])


def _exports(run: Run, graph: nx.DiGraph) -> None:
    """The route as files: the figure (without the selection mark) and the graph as JSON."""
    target = graph.graph["target"]
    with st.popover("Export", icon=":material/download:"):
        title = route_title(run.model.name, run.prompt, run.str_tokens[target], target,
                            graph.graph["threshold"], graph.graph["renormalize"])  # fmt: skip
        stem = f"route-{run.model.name}-token{target}-t{graph.graph['threshold']:g}"
        figure_downloads(route_figure(graph, compact=st.session_state[keys.COMPACT]), title, stem, key="explorer_export")
        st.download_button(
            "Graph as JSON (node-link)", data=partial(graph_json, graph), file_name=f"{safe_stem(stem)}.json",
            mime="application/json", key="explorer_export_json_button", width="stretch", on_click="ignore",
        )  # fmt: skip
        st.caption("Tables: the download icon at the top right of each table saves it as CSV.")


def _on_graph_click() -> None:
    """A click on a node or an edge marker selects it, exactly as choosing it under Inspect."""
    element = clicked_element(st.session_state.get(keys.CHART))
    if element is not None:
        st.session_state[keys.SELECTED] = element


def clicked_element(chart_state) -> str | None:
    """The element id of the first clicked point in a plotly selection state, if any."""
    try:
        points = chart_state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str):
            return data
    return None


def _node_order(name: str) -> tuple[int, int, str]:
    node = NodeId.parse(name)
    return (-node.layer, node.position, node.kind)

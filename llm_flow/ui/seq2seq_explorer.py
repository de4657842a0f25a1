"""The Explorer for an encoder–decoder: the route of one decoder position across both stacks
(:func:`llm_flow.seq2seq_route`), and a panel for the clicked node or edge.

The panel shows what the route knows (weights, kinds, the per-head split, stacks, incoming
edges) and, for the decoder's residual nodes, the logit lens
(:mod:`llm_flow.views.seq2seq_lens`). The decoder-only panels' neurons, promoted tokens and
attention maps read a decoder `Run`'s activations, which a `Seq2SeqRun` does not keep.
"""

from __future__ import annotations

from functools import partial

import networkx as nx
import pandas as pd
import streamlit as st
import torch

from llm_flow.errors import LlmFlowError
from llm_flow.export import route_title
from llm_flow.figures.route import figure_height, route_figure
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.routes.graph import graph_json
from llm_flow.routes.nodes import EDGE_SEPARATOR, EdgeId, NodeId, parse_element
from llm_flow.routes.seq2seq_graph import shared_seq2seq_route
from llm_flow.ui.analysis import COMPACT_FROM_TOKENS
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.panels import describe, edge_weight_text
from llm_flow.ui.seq2seq import pair_header
from llm_flow.ui.state import bind, get_state
from llm_flow.ui.widgets import clicked_element, token_slider
from llm_flow.views.route_summary import edges_frame
from llm_flow.views.seq2seq_lens import pair_logit_lens
from llm_flow.views.tokens import display_token

CHART = "pair_route_chart"  # the plotly chart's selection state (Streamlit's own)
SPINNER = ("Building the route across the encoder and the decoder… The first route on a pair takes seconds "
           "(8.6 s at 16 tokens, 68 s at 128); later ones reuse its contributions.")  # fmt: skip
NO_CHECKS = (
    "No route check or faithfulness measurement for encoder–decoders: both cut the route's edges inside a "
    "decoder-only model's forward pass and score its next-token prediction; cutting edges across the two "
    "stacks (cross-attention) is not implemented, so they are not offered here."
)
NO_LENS = "No logit lens on the encoder's nodes: the output head reads the decoder's states only."
LENS = ("**Logit lens**: what this decoder state would predict, read through the model's own tail (the "
        "decoder's final norm where it has one, and the output head)")  # fmt: skip


def pair_explorer(run: Seq2SeqRun, threshold: float, renormalize: bool) -> None:
    """The route of the chosen decoder position, the Inspect list and the element's panel."""
    state = get_state()
    pair_header(run)
    token_slider(run, "Decoder position to explain",
                 help="Position t reads the decoder's tokens up to t and predicts target token t (the next one).")  # fmt: skip
    position = state.route.position
    try:
        with st.spinner(SPINNER):
            graph = shared_seq2seq_route(run, position, threshold, renormalize)  # kept with the run
    except LlmFlowError as exc:
        st.error(str(exc))
        return
    elements = [None, *sorted(graph.nodes, key=_node_order), *(f"{u}{EDGE_SEPARATOR}{v}" for u, v in graph.edges)]
    if state.route.selected not in elements:
        st.warning(f"{state.route.selected} is not on this route; nothing is selected.")
        state.route.selected = None
    automatic = run.n_source + run.n_decoder > COMPACT_FROM_TOKENS  # until the user chooses
    compact = automatic if state.explorer.compact is None else state.explorer.compact
    graph_column, panel_column = st.columns([3, 2], gap="medium")
    with graph_column:
        st.caption(f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges for decoder position {position} "
                   f"{_predicts(run, position)}. Drag to pan, scroll to zoom, double-click to reset.")  # fmt: skip
        st.toggle(
            "Only the tokens the route reaches", **bind("explorer.compact", to_widget=lambda _: compact),
            help="Leave out the token columns with no node on the route: long pairs stay readable.",
        )  # fmt: skip
        st.plotly_chart(
            route_figure(graph, state.route.selected, compact=compact), key=CHART, on_select=_on_graph_click,
            selection_mode="points", width="stretch", height=figure_height(graph),
            config={"scrollZoom": True, "displaylogo": False},
        )  # fmt: skip
        _exports(run, graph, compact)
        st.caption(NO_CHECKS)
    with panel_column:
        st.selectbox(
            "Inspect", elements, placeholder="Click the graph, or choose a node or edge",
            format_func=lambda e: "(nothing)" if e is None else describe(graph, e), **bind("route.selected"),
        )  # fmt: skip
        pair_element_panel(run, graph, state.route.selected)


def pair_element_panel(run: Seq2SeqRun, graph: nx.DiGraph, element: str | None) -> None:
    """What the route knows about the selected node or edge."""
    if element is None:
        st.info("Click a node or an edge of the graph (or pick one under *Inspect*) to see what it carries.")
        return
    selected = parse_element(element)
    if isinstance(selected, EdgeId):
        _edge_panel(graph, selected)
    else:
        _node_panel(run, graph, selected)


def _edge_panel(graph: nx.DiGraph, edge: EdgeId) -> None:
    data = graph.edges[edge.pair]
    st.subheader(f"{edge.source} → {edge.target}")
    st.caption(edge_weight_text(data, graph.graph["renormalize"]))
    st.markdown(_edge_meaning(graph, edge, data["kind"]))
    if "heads" not in data:
        return
    st.markdown("**Heads**: the edge's weight split by head (they add up to the heads' part of the weight)")
    shares = pd.DataFrame({"head": [f"H{h}" for h in range(len(data["heads"]))], "contribution": data["heads"]})
    st.dataframe(
        shares.sort_values("contribution", ascending=False), hide_index=True, width="stretch", key="pair_heads_table",
        column_config={"contribution": st.column_config.NumberColumn(format="%.4f")},
    )  # fmt: skip


def _edge_meaning(graph: nx.DiGraph, edge: EdgeId, kind: str) -> str:
    """The edge in words: which stack, which layer, which tokens."""
    source, target = (_token(graph, str(node)) for node in (edge.source, edge.target))
    layer = edge.target.layer
    if kind == "cross":
        return (f"**Cross-attention** of decoder layer {layer}: decoder position {edge.target.position} {target} "
                f"reads source token {edge.source.position} {source} from the encoder's final state.")  # fmt: skip
    if kind == "attention":
        return (f"**{edge.target.stack.capitalize()} self-attention** of layer {layer}: position "
                f"{edge.target.position} {target} reads position {edge.source.position} {source}.")  # fmt: skip
    if kind == "ffn":
        return f"**FFN block** of {edge.target.stack} layer {layer} at position {edge.target.position} {target}."
    return f"**Residual stream** of {edge.target.stack} layer {layer} at position {edge.target.position} {target}."


def _node_panel(run: Seq2SeqRun, graph: nx.DiGraph, node: NodeId) -> None:
    data = graph.nodes[str(node)]
    where = "embedding" if node.kind == "X" else f"layer {node.layer}, {node.spec.label}"
    st.subheader(f"{node}: {data['stack']}, {where}")
    tokens = "source" if data["stack"] == "encoder" else "decoder"
    st.markdown(f"Token {node.position} of the {tokens} tokens: {_token(graph, str(node))}")
    incoming = [(u, d) for u, _, d in graph.in_edges(str(node), data=True)]
    if incoming:
        st.markdown("**Incoming edges** on the route (its parts above the threshold)")
        st.dataframe(
            pd.DataFrame({"from": [u for u, _ in incoming], "kind": [d["kind"] for _, d in incoming],
                          "weight": [d["weight"] for _, d in incoming]}).sort_values("weight", ascending=False),
            hide_index=True, width="stretch", key="pair_incoming_table",
            column_config={"weight": st.column_config.NumberColumn(format="%.4f")},
        )  # fmt: skip
    else:
        st.markdown("No incoming edges: the route starts here (an embedding, or parts all at or below the threshold).")
    if not node.is_residual:
        return
    if data["stack"] == "encoder":
        st.caption(NO_LENS)
        return
    st.markdown(LENS)
    lens = pair_logit_lens(run, node.kind, node.layer, node.position, k=10)
    st.dataframe(
        pd.DataFrame({"token": [display_token(t.token) for t in lens], "probability": [t.probability for t in lens]}),
        hide_index=True, width="stretch", key="pair_lens_table",
        column_config={"probability": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0)},
    )  # fmt: skip


def _exports(run: Seq2SeqRun, graph: nx.DiGraph, compact: bool) -> None:
    """The route as files: the figure (without the selection mark), the graph as JSON and its
    edges as CSV (cross edges split by head)."""
    target = graph.graph["target"]
    with st.popover("Export", icon=":material/download:"):
        title = route_title(run.model.name, run.source or "", run.decoder_str_tokens[target], target,
                            graph.graph["threshold"], graph.graph["renormalize"])  # fmt: skip
        stem = safe_stem(f"route-{run.model.name}-decoder{target}-t{graph.graph['threshold']:g}")
        figure_downloads(route_figure(graph, compact=compact), title, stem, key="pair_export")
        st.download_button(
            "Graph as JSON (node-link)", data=partial(graph_json, graph), file_name=f"{stem}.json",
            mime="application/json", key="pair_export_json_button", width="stretch", on_click="ignore",
        )  # fmt: skip
        st.download_button(
            "Edges as CSV", data=partial(_edges_csv, graph), file_name=f"{stem}-edges.csv", mime="text/csv",
            key="pair_export_csv_button", width="stretch", on_click="ignore",
        )  # fmt: skip


def _edges_csv(graph: nx.DiGraph) -> str:
    return edges_frame(graph).to_csv(index=False)


def _predicts(run: Seq2SeqRun, position: int) -> str:
    """What the explained position reads and predicts, with the model's probability of it."""
    reads = display_token(run.decoder_str_tokens[position])
    if position + 1 >= run.n_decoder:
        return f"(reads {reads!r}, predicts what would follow the target)"
    probability = torch.softmax(run.logits[position].double(), -1)[run.decoder_tokens[position + 1]].item()
    nxt = display_token(run.decoder_str_tokens[position + 1])
    return f"(reads {reads!r}, predicts target token {position} {nxt!r} with probability {probability:.1%})"


def _token(graph: nx.DiGraph, name: str) -> str:
    return repr(display_token(graph.nodes[name]["token"]))


def _on_graph_click() -> None:
    """A click on a node or an edge marker selects it, exactly as choosing it under Inspect."""
    element = clicked_element(st.session_state.get(CHART))
    if element is not None:
        get_state().route.selected = element


def _node_order(name: str) -> tuple[bool, int, int, str]:
    """Decoder first, top layers first, then by position."""
    node = NodeId.parse(name)
    return (node.stack != "decoder", -node.layer, node.position, node.kind)

"""The side panels: next-token predictions, and what a clicked node or edge did."""

from __future__ import annotations

import networkx as nx
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from llm_flow.models.run import Run
from llm_flow.routes.nodes import EdgeId, NodeId, parse_element
from llm_flow.ui.attention import open_head
from llm_flow.ui.frame import active_run, sync_link
from llm_flow.ui.route_check import edge_removal_panel
from llm_flow.ui.state import bind, get_state
from llm_flow.views.heads import attention_map, contribution_map, edge_heads
from llm_flow.views.logit_lens import logit_lens
from llm_flow.views.neurons import expert_label, expert_shares, top_neurons
from llm_flow.views.predictions import head_note, prediction_title, top_predictions
from llm_flow.views.promoted import (
    Promotion,
    block_update,
    head_output,
    neuron_output,
    promoted_tokens,
)
from llm_flow.views.tokens import display_token

_BLOCK_BEFORE = {"A": "attention block", "I": "FFN block"}


@st.fragment
def predictions_panel(position: int) -> None:
    run = active_run()
    st.subheader(prediction_title(run, display_token(run.str_tokens[position])))
    if head_note(run):
        st.caption(head_note(run))
    st.number_input(
        "Temperature", 0.05, 5.0, step=0.05, **bind("explorer.temperature"),
        help="Divides the logits before the softmax: below 1 sharpens, above 1 flattens.",
    )  # fmt: skip
    predictions = top_predictions(run, position, k=10, temperature=get_state().explorer.temperature)
    frame = pd.DataFrame(
        {
            "token": [display_token(p.token) for p in predictions],
            "probability": [p.probability for p in predictions],
            "logit": [p.logit for p in predictions],
        }
    )
    st.dataframe(
        frame, hide_index=True, width="stretch", key="predictions_table",
        column_config={
            "probability": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0),
            "logit": st.column_config.NumberColumn(format="%.2f"),
        },
    )  # fmt: skip
    sync_link()


@st.fragment
def element_panel(graph: nx.DiGraph, element: str | None) -> None:
    """Dispatch on what was selected: a residual node, an FFN node or an edge. A fragment: its
    own widgets (head, neuron, lens settings) redraw the panel, not the graph."""
    run = active_run()
    if element is None:
        st.info("Click a node or an edge of the graph (or pick one under *Inspect*) to see what it did.")
        return
    selected = parse_element(element)
    if isinstance(selected, EdgeId):
        _edge_panel(run, graph, selected)
    elif selected.kind == "M":
        _ffn_panel(run, selected)
    else:
        _residual_panel(run, selected)
    sync_link()


def describe(graph: nx.DiGraph, element: str) -> str:
    """A one-line label for the Inspect list."""
    selected = parse_element(element)
    if isinstance(selected, EdgeId):
        data = graph.edges[selected.pair]
        return f"{selected.source} → {selected.target} · {data['kind']} {data['weight']:.3f}"
    return f"{element} · {selected.spec.label} · {display_token(graph.nodes[element]['token'])}"


def edge_weight_text(data: dict, renormalized: bool) -> str:
    """The edge's weight, split into the residual's and the heads' shares where a token's own
    residual and its attention to itself share the edge."""
    after = f"after threshold{' and renormalisation' if renormalized else ''}"
    text = f"{data['kind']} edge, weight {data['weight']:.3f} ({after})"
    if data["kind"] == "attention" and data.get("residual"):
        heads = data["weight"] - data["residual"]
        text += f" = residual stream {data['residual']:.3f} + attention heads {heads:.3f}"
    return text


def _residual_panel(run: Run, node: NodeId) -> None:
    kind, layer, position = node.kind, node.layer, node.position
    where = "embedding" if kind == "X" else f"layer {layer}, {'after attention' if kind == 'A' else 'after the layer'}"
    st.subheader(f"{node}: {where}, token {position} {display_token(run.str_tokens[position])!r}")
    st.checkbox("Normalise before unembedding (final norm)", **bind("explorer.lens_normalize"))
    lens = logit_lens(run, kind, layer, position, k=10, normalize=get_state().explorer.lens_normalize)
    st.markdown("**Logit lens**: what this residual state would predict")
    st.dataframe(
        pd.DataFrame({
            "token": [display_token(t.token) for t in lens],
            "probability": [t.probability for t in lens],
            "change": [_rank_change(t.rank_change) for t in lens],
        }),
        hide_index=True, width="stretch", key="lens_table",
        column_config={"probability": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0)},
    )  # fmt: skip
    update = block_update(run, kind, layer, position)
    if update is not None:
        block = "layer (attention + FFN)" if run.parallel and kind == "I" else _BLOCK_BEFORE[kind]
        _promotion(f"Tokens the {block} before it promoted and suppressed", promoted_tokens(run.model, update))


def _ffn_panel(run: Run, node: NodeId) -> None:
    layer, position = node.layer, node.position
    st.subheader(f"{node}: FFN of layer {layer} at token {position} {display_token(run.str_tokens[position])!r}")
    st.slider("Neurons shown", 5, 100, **bind("explorer.neuron_count"))
    explorer = get_state().explorer
    expert = _experts_table(run, layer, position) if run.layer(layer).experts is not None else None
    neurons = top_neurons(run, layer, position, k=explorer.neuron_count, expert=expert)
    st.markdown("**Neurons** ranked by contribution to the residual after the FFN")
    columns = {"neuron": [n.neuron for n in neurons]}
    if expert is None and run.layer(layer).experts is not None:
        columns["expert"] = [expert_label(n.expert) for n in neurons]
    st.dataframe(
        pd.DataFrame({
            **columns,
            "contribution": [n.contribution for n in neurons],
            "activation": [n.activation for n in neurons],
        }),
        hide_index=True, width="stretch", key="neuron_table",
        column_config={"contribution": st.column_config.ProgressColumn(
            format="%.4f", min_value=0.0, max_value=max(n.contribution for n in neurons) or 1.0)},
    )  # fmt: skip
    choices = [n.neuron for n in neurons]
    if explorer.neuron not in choices:
        explorer.neuron = choices[0]
    st.selectbox("Neuron", choices, **bind("explorer.neuron"))
    neuron = explorer.neuron
    _promotion(f"Tokens neuron {neuron} promoted and suppressed", promoted_tokens(run.model, neuron_output(run, layer, position, neuron)))


def _experts_table(run: Run, layer: int, position: int) -> int | None:
    """A mixture of experts: the node split by expert; returns the expert whose neurons to rank
    (None: all of the token's)."""
    shares, residual = expert_shares(run, layer, position)
    st.markdown(
        f"**Experts** this token used, with the router's weight and their share of the residual "
        f"after the FFN (the residual keeps {residual:.1%})"
    )
    st.dataframe(
        pd.DataFrame({
            "expert": [expert_label(share.expert) for share in shares],
            "router weight": [share.router_weight for share in shares],
            "contribution": [share.contribution for share in shares],
        }),
        hide_index=True, width="stretch", key="expert_table",
    )  # fmt: skip
    choices = [None, *(share.expert for share in shares)]
    explorer = get_state().explorer
    if explorer.expert not in choices:  # another node, other experts
        explorer.expert = None
    label = {e: "every expert" if e is None else expert_label(e) for e in choices}
    st.selectbox("Neurons of", choices, format_func=label.get, **bind("explorer.expert"))
    return explorer.expert


def _edge_panel(run: Run, graph: nx.DiGraph, edge: EdgeId) -> None:
    data = graph.edges[edge.pair]
    st.subheader(f"{edge.source} → {edge.target}")
    st.caption(edge_weight_text(data, graph.graph["renormalize"]))
    edge_removal_panel(run, graph, edge)
    if data["kind"] == "residual":
        _residual_panel(run, edge.target)
        return
    if data["kind"] == "ffn":
        _ffn_panel(run, edge.source if edge.source.kind == "M" else edge.target)
        return
    source_position = edge.source.position
    layer, position = edge.target.layer, edge.target.position
    shares = edge_heads(run, layer, source_position, position)
    st.markdown(
        f"**Heads** carrying token {source_position} {display_token(run.str_tokens[source_position])!r} "
        f"to token {position} {display_token(run.str_tokens[position])!r} in layer {layer}"
    )
    st.plotly_chart(_head_bars(shares), width="stretch", key="head_bars", config={"displayModeBar": False})
    ranked = [s.head for s in shares]
    explorer = get_state().explorer
    if explorer.head not in ranked:
        explorer.head = ranked[0]
    labels = {s.head: f"H{s.head} ({s.contribution:.3f})" for s in shares}
    st.selectbox("Head", ranked, format_func=labels.get, **bind("explorer.head"))
    head = explorer.head
    if st.button(f"Open L{layer} H{head} on the Attention page", icon=":material/visibility:",
                 key="explorer_attention_button"):  # fmt: skip
        open_head(layer, head, position)
    tokens = [f"{i}:{display_token(t)}" for i, t in enumerate(run.str_tokens)]
    left, right = st.columns(2)
    with left:
        st.markdown(f"Attention map, L{layer} H{head}")
        st.plotly_chart(_heatmap(attention_map(run, layer, head), tokens, position, source_position),
                        width="stretch", key="attention_map")  # fmt: skip
    with right:
        st.markdown(f"Contribution map, L{layer} H{head}")
        st.plotly_chart(_heatmap(contribution_map(run, layer, head), tokens, position, source_position),
                        width="stretch", key="contribution_map")  # fmt: skip
    _promotion(f"Tokens head {head} promoted and suppressed at token {position}",
               promoted_tokens(run.model, head_output(run, layer, position, head)))  # fmt: skip


def _promotion(title: str, promotion: Promotion) -> None:
    st.markdown(f"**{title}**")
    for column, name, tokens in zip(
        st.columns(2), ("promoted", "suppressed"), (promotion.promoted, promotion.suppressed)
    ):
        column.dataframe(
            pd.DataFrame({name: [display_token(t.token) for t in tokens], "score": [t.score for t in tokens]}),
            hide_index=True, width="stretch", key=f"{name}_{title}",
            column_config={"score": st.column_config.NumberColumn(format="%+.2f")},
        )  # fmt: skip


def _rank_change(change: int | None) -> str:
    if change is None:
        return ""
    return "=" if change == 0 else (f"↑{change}" if change > 0 else f"↓{-change}")


def _head_bars(shares) -> go.Figure:
    fig = go.Figure(go.Bar(
        x=[f"H{s.head}" for s in shares], y=[s.contribution for s in shares], marker_color="#4c78a8",
        hovertemplate="%{x}: %{y:.4f}<extra></extra>",
    ))  # fmt: skip
    fig.update_layout(height=200, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="contribution")
    return fig


def _heatmap(values, tokens: list[str], row: int, column: int) -> go.Figure:
    fig = go.Figure(go.Heatmap(
        z=values.numpy(), x=tokens, y=tokens, colorscale="Blues", zmin=0, showscale=False,
        hovertemplate="query %{y}<br>source %{x}<br>%{z:.4f}<extra></extra>",
    ))  # fmt: skip
    fig.add_shape(type="rect", x0=column - 0.5, x1=column + 0.5, y0=row - 0.5, y1=row + 0.5,
                  line=dict(color="#e45756", width=2))  # fmt: skip
    fig.update_layout(
        height=320, margin=dict(l=10, r=10, t=10, b=10),
        yaxis=dict(autorange="reversed", showticklabels=len(tokens) <= 40),
        xaxis=dict(showticklabels=len(tokens) <= 40, tickangle=-60),
    )  # fmt: skip
    return fig

"""The route graph as a plotly figure: layers bottom to top, tokens left to right. An
encoder–decoder's route has the source tokens' columns on the left with the encoder's layers at
the bottom, and the decoder tokens' columns on the right with the decoder's layers above them, so
cross-attention edges climb from the encoder's top to the decoder's ``C`` nodes.

Every node and every edge is a clickable point (edges through a marker at their midpoint); the
point's ``customdata`` is the element id the side panel understands: a node name (``A5_3``) or
an edge ``"I4_1->A5_3"`` (:mod:`llm_flow.routes.nodes`). Edges are drawn in a few weight buckets, one trace each, so a graph of
thousands of edges is still a handful of traces.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

import networkx as nx
import plotly.graph_objects as go

from llm_flow.errors import ArgumentError
from llm_flow.routes.nodes import KINDS, EdgeId, NodeId, parse_element
from llm_flow.views.tokens import display_token

_BUCKETS = 6
_VERTICAL_MARKER_SHIFT = 0.12
_MIN_X_SPAN = 3.0  # token columns: the narrowest x axis a figure gets
_COLORS = {"attention": "#4c78a8", "residual": "#9a9a9a", "ffn": "#d6608f", "cross": "#f58518"}
_LEGEND_ORDER = "XAIMC"  # node traces drawn (and listed) in this order
_LEGEND_SIZE = 11
_LEGEND_ROOM = 52  # the legend at the bottom: two rows (a narrow page column wraps it), a little space above
_TICK_ANGLE = -60  # token labels are turned when there are many columns
_TICK_GAP = 8  # pixels between the plot and its tick labels, as plotly draws them
_LABEL_CHARS = 20
_Y_MARGIN = 0.8  # levels of room below the embeddings and above the top layer in a focused view


@dataclass(frozen=True)
class Level:
    """Vertical placement: y coordinate and horizontal offset of a node."""

    y: float
    dx: float = 0.0


def level(node: NodeId, parallel: bool, encoder_layers: int = 0) -> Level:
    """X at 0; sequential layer l: A at 2l+1, I at 2l+2, FFN square between them, shifted right.
    Parallel layer l: I at l+1, FFN square between I{l-1} and I{l}. An encoder–decoder's decoder
    (`encoder_layers` below it) starts one level above the encoder's top, with three levels a
    layer: A, C (after cross-attention), I, and the FFN square between C and I."""
    layer = node.layer
    if node.stack == "decoder":
        base = 2 * encoder_layers + 1.0
        if node.kind == "X":
            return Level(base)
        return {"A": Level(base + 3 * layer + 1), "C": Level(base + 3 * layer + 2),
                "M": Level(base + 3 * layer + 2.5, 0.3)}.get(node.kind, Level(base + 3 * layer + 3))  # fmt: skip
    if node.kind == "X":
        return Level(0.0)
    if parallel:
        return Level(layer + 0.5, 0.3) if node.kind == "M" else Level(layer + 1.0)
    return {"A": Level(2 * layer + 1.0), "M": Level(2 * layer + 1.5, 0.3)}.get(node.kind, Level(2 * layer + 2.0))


def token_columns(graph: nx.DiGraph, compact: bool) -> list[int]:
    """Token positions shown left to right: all of them, or (compact) only those the route reaches.
    In an encoder–decoder's graph, the source positions then the decoder positions (see `_columns`)."""
    return [position for _, position in _columns(graph, compact)]


def _columns(graph: nx.DiGraph, compact: bool) -> list[tuple[str | None, int]]:
    """(stack, position) of each token column, left to right; stack None in a one-stack graph."""
    if not graph.graph.get("encoder_decoder"):
        if not compact:
            return [(None, p) for p in range(graph.graph["n_tokens"])]
        return [(None, p) for p in sorted({d["position"] for _, d in graph.nodes(data=True)} | {graph.graph["target"]})]
    counts = {"encoder": graph.graph["n_source"], "decoder": graph.graph["n_tokens"]}
    if not compact:
        return [(stack, p) for stack in ("encoder", "decoder") for p in range(counts[stack])]
    reached = {(d["stack"], d["position"]) for _, d in graph.nodes(data=True)} | {("decoder", graph.graph["target"])}
    return sorted(reached, key=lambda column: (column[0] == "decoder", column[1]))


def _top_level(graph: nx.DiGraph) -> float:
    """The y of the highest level a node can have."""
    layers = graph.graph["n_layers"]
    if graph.graph.get("encoder_decoder"):
        return 2 * graph.graph["encoder_layers"] + 1 + 3 * layers
    return layers if graph.graph["parallel"] else 2 * layers


def route_figure(
    graph: nx.DiGraph, selected: str | None = None, compact: bool = False, focus: str | None = None
) -> go.Figure:
    """The figure for a route graph built by :func:`llm_flow.build_graph`. `compact` leaves out
    the token columns the route does not touch, so routes in long prompts stay readable. `focus`
    (a node name) opens the view zoomed on that node (:func:`focus_ranges`); the axis ranges are
    part of the figure, so exports show the same view."""
    columns = _columns(graph, compact)
    position = _node_positions(graph, columns)
    fig = go.Figure()
    for trace in _edge_traces(graph, position):
        fig.add_trace(trace)
    fig.add_trace(_edge_markers(graph, position))
    for kind in _LEGEND_ORDER:
        trace = _node_trace(graph, position, kind)
        if trace is not None:
            fig.add_trace(trace)
    if selected is not None:
        highlight = _highlight(graph, position, selected)
        if highlight is not None:
            fig.add_trace(highlight)
    _layout(fig, graph, columns, compact)
    if focus is not None:
        x_range, y_range = focus_ranges(graph, focus, compact)
        fig.update_layout(xaxis_range=x_range, yaxis_range=y_range)
    return fig


def node_positions(graph: nx.DiGraph, columns: list[int]) -> dict[str, tuple[float, float]]:
    """Where each node is drawn: (x, y) in axis units, for the token `columns` shown (one-stack
    graphs; an encoder–decoder's columns are (stack, position) pairs, see `_columns`)."""
    return _node_positions(graph, [(None, p) for p in columns])


def _node_positions(graph: nx.DiGraph, columns: list[tuple[str | None, int]]) -> dict[str, tuple[float, float]]:
    parallel, encoder_layers = graph.graph["parallel"], graph.graph.get("encoder_layers", 0)
    column_of = {column: index for index, column in enumerate(columns)}
    return {
        name: (column_of[(node.stack, data["position"])] + lv.dx, lv.y)
        for name, data in graph.nodes(data=True)
        for node in [NodeId.parse(name)]
        for lv in [level(node, parallel, encoder_layers)]
    }


def focus_ranges(
    graph: nx.DiGraph, node: str, compact: bool = False, columns: int = 9, levels: int = 12
) -> tuple[list[float], list[float]]:
    """x and y axis ranges of a view `columns` token columns wide and `levels` node levels high
    (two levels a layer for sequential blocks, one for parallel) with `node` in the middle.

    Near the graph's edges the window slides to stay inside it (no empty margin), and a graph
    smaller than the window is shown whole in that direction.
    """
    if node not in graph:
        raise ArgumentError(f"{node!r} is not a node of this route: nothing to centre on")
    shown = _columns(graph, compact)
    x, y = _node_positions(graph, shown)[node]
    return (
        _window(x, columns, *_x_extent(len(shown))),
        _window(y, levels, -_Y_MARGIN, _top_level(graph) + _Y_MARGIN),
    )


def _window(centre: float, size: float, low: float, high: float) -> list[float]:
    if high - low <= size:
        return [low, high]
    start = min(max(centre - size / 2, low), high - size)
    return [start, start + size]


def _x_extent(n_columns: int) -> tuple[float, float]:
    """Every column with a margin, and at least `_MIN_X_SPAN` columns wide: a compact route that
    reaches one or two tokens is not stretched over the figure, where its edge markers (shifted
    a fraction of a column) would look like a column of their own."""
    low, high = -0.6, n_columns - 0.4
    pad = max(0.0, _MIN_X_SPAN - (high - low)) / 2
    return low - pad, high + pad


def figure_height(graph: nx.DiGraph) -> int:
    n_levels = _top_level(graph) + 1
    return int(min(2400, max(480, 100 + 12 * n_levels)))


def _edge_traces(graph: nx.DiGraph, position: dict) -> list[go.Scatter]:
    buckets: dict[tuple[str, int], tuple[list, list]] = {}
    for source, target, data in graph.edges(data=True):
        bucket = min(_BUCKETS - 1, int(data["weight"] * _BUCKETS))
        xs, ys = buckets.setdefault((data["kind"], bucket), ([], []))
        (x0, y0), (x1, y1) = position[source], position[target]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    traces = []
    for (kind, bucket), (xs, ys) in sorted(buckets.items()):
        strength = (bucket + 1) / _BUCKETS
        traces.append(
            go.Scatter(
                x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                line=dict(color=_COLORS[kind], width=0.8 + 5 * strength),
                opacity=0.2 + 0.7 * strength,
            )
        )  # fmt: skip
    return traces


def _edge_markers(graph: nx.DiGraph, position: dict) -> go.Scatter:
    xs, ys, ids, texts, sizes, colors = [], [], [], [], [], []
    for source, target, data in graph.edges(data=True):
        x, y = _marker_position(position[source], position[target])
        xs.append(x)
        ys.append(y)
        ids.append(str(EdgeId(NodeId.parse(source), NodeId.parse(target))))
        texts.append(_edge_hover(source, target, data))
        sizes.append(4 + 4 * data["weight"])
        colors.append(_COLORS[data["kind"]])
    return go.Scatter(
        x=xs, y=ys, mode="markers", name="edge (midpoint)", customdata=ids, hovertext=texts,
        hoverinfo="text", marker=dict(size=sizes, color=colors, opacity=0.35, symbol="diamond"),
    )  # fmt: skip


def _marker_position(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    """The edge's midpoint; on vertical edges (a token's own column) shifted left of the nodes."""
    (x0, y0), (x1, y1) = start, end
    shift = -_VERTICAL_MARKER_SHIFT if x0 == x1 else 0.0
    return (x0 + x1) / 2 + shift, (y0 + y1) / 2


def _edge_hover(source: str, target: str, data: dict) -> str:
    text = f"{source} → {target}<br>{data['kind']} weight {data['weight']:.3f}"
    if data["kind"] in ("attention", "cross"):
        top = sorted(enumerate(data["heads"]), key=lambda hw: -hw[1])[:3]
        text += "<br>" + ", ".join(f"H{h} {w:.3f}" for h, w in top if w > 0)
        if data.get("residual"):
            text += f"<br>residual {data['residual']:.3f}"
    return text


def _node_trace(graph: nx.DiGraph, position: dict, kind: str) -> go.Scatter | None:
    spec = KINDS[kind]
    names = [n for n, d in graph.nodes(data=True) if d["kind"] == spec.attribute]
    if not names:
        return None
    texts = [
        f"{n} · {spec.label}<br>"
        + (f"{graph.nodes[n]['stack']} · " if "stack" in graph.nodes[n] else "")
        + (f"layer {graph.nodes[n]['layer']} · " if kind != "X" else "")
        + f"token {graph.nodes[n]['position']}: {display_token(graph.nodes[n]['token'])}"
        for n in names
    ]
    return go.Scatter(
        x=[position[n][0] for n in names], y=[position[n][1] for n in names], mode="markers",
        name=spec.label, customdata=names, hovertext=texts, hoverinfo="text",
        marker=dict(symbol=spec.symbol, color=spec.color, size=spec.size,
                    line=dict(width=1, color="white")),
    )  # fmt: skip


def _highlight(graph: nx.DiGraph, position: dict, selected: str) -> go.Scatter | None:
    element = parse_element(selected)
    if isinstance(element, EdgeId) and graph.has_edge(*element.pair):
        x, y = _marker_position(*(position[n] for n in element.pair))
    elif selected in graph:
        x, y = position[selected]
    else:
        return None
    return go.Scatter(
        x=[x], y=[y], mode="markers", name="selected", hoverinfo="skip", customdata=[selected],
        marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(width=3, color="#e45756")),
    )  # fmt: skip


def _layout(fig: go.Figure, graph: nx.DiGraph, columns: list[tuple[str | None, int]], compact: bool) -> None:
    tokens = {None: graph.graph["tokens"], "decoder": graph.graph["tokens"], "encoder": graph.graph.get("source_tokens")}
    labels = [
        _label(f"{i}:{display_token(tokens[stack][i])}" if compact else display_token(tokens[stack][i]))
        for stack, i in columns
    ]
    angle = _TICK_ANGLE if len(columns) > 8 else 0
    size = 11 if len(columns) <= 40 else 9
    tick_y, tick_text = _layer_ticks(graph)
    if graph.graph.get("encoder_decoder"):  # between the source's columns and the decoder's
        first = next((k for k, (stack, _) in enumerate(columns) if stack == "decoder"), len(columns))
        fig.add_vline(x=first - 0.5, line=dict(color="#c8c8c8", width=1, dash="dot"))
    fig.update_layout(
        height=figure_height(graph),
        margin=dict(l=10, r=10, t=36, b=_label_room(labels, angle, size) + _LEGEND_ROOM),
        dragmode="pan",
        clickmode="event+select",
        hovermode="closest",
        # under the token labels, whatever their length: the bottom margin holds both
        legend=dict(orientation="h", yref="container", yanchor="bottom", y=0, x=0, font=dict(size=_LEGEND_SIZE)),
        plot_bgcolor="white",
        xaxis=dict(
            tickmode="array", tickvals=list(range(len(columns))), ticktext=labels,
            tickangle=angle, range=list(_x_extent(len(columns))),
            tickfont=dict(size=size), showgrid=False, zeroline=False,
        ),
        yaxis=dict(
            tickmode="array", tickvals=tick_y, ticktext=tick_text,
            showgrid=True, gridcolor="#f0f0f0", zeroline=False, fixedrange=False,
        ),
    )  # fmt: skip


def _layer_ticks(graph: nx.DiGraph) -> tuple[list[float], list[str]]:
    """The y axis: the embeddings, then each layer's output (every few layers in deep models);
    an encoder–decoder's encoder layers E0, E1 … under its decoder layers D0, D1 …"""
    n_layers, parallel = graph.graph["n_layers"], graph.graph["parallel"]
    if graph.graph.get("encoder_decoder"):
        encoder_layers = graph.graph["encoder_layers"]
        base = 2 * encoder_layers + 1.0
        enc_step, dec_step = max(1, encoder_layers // 15), max(1, n_layers // 15)
        return (
            [0.0] + [2 * l + 2.0 for l in range(0, encoder_layers, enc_step)]
            + [base] + [base + 3 * l + 3 for l in range(0, n_layers, dec_step)],
            ["enc emb"] + [f"E{l}" for l in range(0, encoder_layers, enc_step)]
            + ["dec emb"] + [f"D{l}" for l in range(0, n_layers, dec_step)],
        )  # fmt: skip
    layer_y = [(l + 1.0) if parallel else (2 * l + 2.0) for l in range(n_layers)]
    step = max(1, n_layers // 15)
    return [0.0] + layer_y[::step], ["emb"] + [f"L{l}" for l in range(0, n_layers, step)]


def _label(text: str) -> str:
    """A token column's label, cut to a length the margin can hold (the hover shows it whole)."""
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _label_room(labels: list[str], angle: float, size: float) -> int:
    """Pixels under the plot that tick labels of font `size`, turned by `angle` degrees, need.

    Text widths are estimated generously (Arial averages about half an em a character; wide
    East Asian characters take a whole em), so the legend placed below never meets them.
    """
    width = max((_text_width(label, size) for label in labels), default=0.0)
    turn = math.radians(abs(angle))
    return math.ceil(width * math.sin(turn) + 1.3 * size * math.cos(turn)) + _TICK_GAP


def _text_width(text: str, size: float) -> float:
    return size * sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.62 for c in text)

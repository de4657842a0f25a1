"""Plotly figures of attention: BertViz's head, model and neuron views, kept small at 1,000 tokens.

Sizes stay bounded because the data is windowed and top-k filtered before it gets here, arrays go
out as float32 (plotly sends them base64-encoded), head-view lines are a few traces per head
(weights bucketed into shades) and the model view is one heatmap for the whole grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from llm_flow.errors import ArgumentError
from llm_flow.export import attach_html_script
from llm_flow.views.attention import AttentionView
from llm_flow.views.attention_scores import NeuronView
from llm_flow.views.tokens import display_token

HEAD_COLORS = qualitative.Plotly + qualitative.Dark24  # a head keeps its colour whatever is filtered
_AGGREGATE_COLOR = "#4c4c8c"
WEIGHTING_NAMES = {
    "attention": "attention weight",
    "norm": "attention × ‖(v+b_V)W_O‖₂",
    "alti": "ALTI contribution",
}
WEIGHTING_SCALES = {"attention": "Blues", "norm": "Oranges", "alti": "Purples"}
# Head-view line shades: (upper bound of weight / strongest weight shown, opacity, width). Lines
# under _FAINTEST of the strongest are not drawn: invisible anyway, and most of the bytes.
_SHADES = ((0.1, 0.15, 1.0), (0.3, 0.3, 1.5), (0.6, 0.55, 2.0), (1.0, 0.9, 3.0))
_FAINTEST = 0.01
# Beyond these a figure is tens of MB and the browser stalls: refused with what to change.
MAX_LINES = 200_000
MAX_CELLS = 2_000_000
_ROW_PX = 18
# Standalone HTML of the head view: hovering a token (the traces named "query tokens" and "source
# tokens") dims every line but its own (out of a query, into a source); leaving it restores them.
# The token's segments are drawn again on top of the dimmed line traces (read from `_fullData`,
# where plotly has decoded the arrays it was sent). Changes are chained so that fast mouse moves
# apply in order. Streamlit's chart gives no hover events, so the app isolates on click instead.
HOVER_ISOLATION_JS = """
const gd = document.getElementById('{plot_id}');
const DIM = 0.12;
let shown = null, queue = Promise.resolve();
const later = (step) => { queue = queue.then(step, step); };
const isLines = (t) => t.mode === 'lines' && t.showlegend === false && t.meta !== 'hover';
function restore() {
  if (shown === null) return;
  const s = shown; shown = null;
  const n = gd.data.length;
  const added = Array.from({length: s.added}, (_, k) => n - s.added + k);
  return Promise.resolve(added.length ? Plotly.deleteTraces(gd, added) : null)
    .then(() => s.lines.length ? Plotly.restyle(gd, {opacity: s.opacities}, s.lines) : null);
}
function isolate(y, column, key) {
  const lines = [], opacities = [], overlays = [];
  for (const t of gd._fullData) {
    const input = gd.data[t.index];
    if (!isLines(input)) continue;
    lines.push(t.index);
    opacities.push(input.opacity === undefined ? 1 : input.opacity);
    if (t.visible !== true) continue;
    const xs = [], ys = [];
    for (let k = 0; k + 1 < t.y.length; k += 3) {
      if (t.y[k + column] === y) { xs.push(0, 1, null); ys.push(t.y[k], t.y[k + 1], null); }
    }
    if (xs.length) overlays.push({type: 'scatter', mode: 'lines', x: xs, y: ys, meta: 'hover',
      line: {color: t.line.color, width: t.line.width}, opacity: t.opacity, name: t.name,
      legendgroup: t.legendgroup, showlegend: false, hoverinfo: 'skip'});
  }
  shown = {key: key, lines: lines, opacities: opacities, added: overlays.length};
  return Plotly.restyle(gd, {opacity: opacities.map((o) => o * DIM)}, lines)
    .then(() => overlays.length ? Plotly.addTraces(gd, overlays) : null);
}
gd.on('plotly_hover', (event) => {
  const point = event.points[0];
  const column = {'query tokens': 0, 'source tokens': 1}[point.data.name];  // lines out of / into it
  if (column === undefined) return;
  const key = column + ':' + point.y;
  later(() => (shown !== null && shown.key === key) ? null
    : Promise.resolve(restore()).then(() => isolate(point.y, column, key)));
});
gd.on('plotly_unhover', () => later(restore));
"""


def color_of(head_index: int) -> str:
    return HEAD_COLORS[head_index % len(HEAD_COLORS)]


def strongest(view: AttentionView) -> float:
    """The weight drawn at full strength: 1 for attention (a probability); for norms and ALTI
    shares the 99th percentile of the weights shown, so one outlier does not wash out the rest."""
    positive = view.weights[view.weights > 0]
    if view.weighting == "attention" or positive.size == 0:
        return 1.0
    return float(np.quantile(positive, 0.99))


# --- head view ---------------------------------------------------------------------------------


def head_view_figure(view: AttentionView, focus: int | None = None, title: str | None = None) -> go.Figure:
    """Queries (left) joined to the sources they weight (right), one colour per head.

    Click a legend entry to hide or show a head; `focus` (a token position in the window) keeps
    only that query's lines, which the app sets when a token is clicked. In the exported HTML,
    hovering a token dims the other tokens' lines (`HOVER_ISOLATION_JS`).
    """
    if len(view.layers) != 1:
        raise ArgumentError("the head view shows one layer: pick a single layer")
    positions = view.positions
    if focus is not None and focus not in positions:
        raise ArgumentError(f"token {focus} is not in the window {positions[0]}..{positions[-1]}")
    n = len(positions)
    source_positions, source_tokens = view.sources
    rows = max(n, len(source_positions))  # cross-attention: queries and sources are two texts
    row_px = max(_ROW_PX, min(30, 600 // rows))  # short prompts get room, long ones 18 px a token
    y = -np.arange(n, dtype=np.float32)
    y_sources = -np.arange(len(source_positions), dtype=np.float32)
    top = strongest(view)
    drawn = int((view.weights >= _FAINTEST * top).sum())
    if drawn > MAX_LINES:
        raise ArgumentError(
            f"the head view would draw {drawn:,} lines (at most {MAX_LINES:,}): set top-k sources, "
            "a smaller window or fewer heads"
        )
    fig = go.Figure()
    for b, label in enumerate(view.head_labels):
        weights = view.weights[0, b]  # [W, S]
        if focus is not None:
            weights = np.where(np.arange(n)[:, None] == focus - positions[0], weights, 0.0)
        color = _AGGREGATE_COLOR if view.aggregate else color_of(view.heads[b])
        _add_head_lines(fig, weights, y, y_sources, top, label, color)
    for side, x, anchor, ys, where, words in (
        ("query", 0.0, "middle left", y, positions, view.tokens),
        ("source", 1.0, "middle right", y_sources, source_positions, source_tokens),
    ):
        fig.add_trace(go.Scatter(
            x=np.full(len(ys), x, dtype=np.float32), y=ys, mode="markers+text", text=[display_token(t) for t in words],
            textposition=anchor, customdata=where, name=f"{side} tokens", showlegend=False,
            marker=dict(size=7, color="#555" if side == "query" else "#999"),
            hovertext=_token_hovers(view, side), hoverinfo="text",
        ))  # fmt: skip
    _mark_split(fig, view, y)
    layer = view.layers[0]
    fig.update_layout(
        title=title or f"Layer {layer}: {WEIGHTING_NAMES[view.weighting]}" + _filters(view),
        height=row_px * rows + 140,
        width=760,
        margin=dict(l=20, r=20, t=70, b=20),
        plot_bgcolor="white",
        xaxis=dict(visible=False, range=[-0.9, 1.9], fixedrange=True),
        yaxis=dict(visible=False, range=[-rows + 0.4, 0.6]),
        legend=dict(x=1.0, y=1.0, yanchor="top", title_text="click to hide/show"),
        hovermode="closest",
        clickmode="event+select",
    )
    return attach_html_script(fig, HOVER_ISOLATION_JS)


def head_view_menu_figure(view: AttentionView, layer: int | None = None, selected: Sequence[int] | None = None) -> go.Figure:
    """BertViz's head view with its layer menu: every layer of `view` drawn by `head_view_figure`,
    one shown at a time (first `layer`, default the first) and the others picked from a dropdown.

    Heads not in `selected` (model head numbers; default all) start hidden, listed in the legend
    to be clicked back, as BertViz's initially selected heads. Hover isolation works as in the
    single-layer figure: it only reads the visible traces."""
    layer = view.layers[0] if layer is None else layer
    if layer not in view.layers:
        raise ArgumentError(f"layer {layer} is not among the layers drawn ({', '.join(map(str, view.layers))})")
    shown_labels = None if selected is None or view.aggregate else {f"head {h}" for h in selected}
    figures = [head_view_figure(replace(view, layers=(l,), weights=view.weights[a : a + 1], outside=view.outside[a : a + 1]))
               for a, l in enumerate(view.layers)]  # fmt: skip
    fig = go.Figure(layout=figures[view.layers.index(layer)].layout)
    owners = []  # per trace: the layer it belongs to
    for l, part in zip(view.layers, figures):
        for trace in part.data:
            if trace.legendgroup:  # one legend group per layer: a legend click must not reveal hidden layers
                trace.legendgroup = f"L{l} {trace.legendgroup}"
            fig.add_trace(trace)
            owners.append(l)

    def visibility(shown: int) -> list[bool | str]:
        def state(trace, owner: int) -> bool | str:
            if owner != shown:
                return False
            hidden = shown_labels is not None and trace.name not in shown_labels and trace.mode == "lines"
            return "legendonly" if hidden else True

        return [state(trace, owner) for trace, owner in zip(fig.data, owners)]

    fig.update_traces(visible=False)
    for trace, visible in zip(fig.data, visibility(layer)):
        trace.visible = visible
    if len(view.layers) > 1:
        buttons = [dict(label=f"Layer {l}", method="update",
                        args=[{"visible": visibility(l)}, {"title.text": part.layout.title.text}])
                   for l, part in zip(view.layers, figures)]  # fmt: skip
        fig.update_layout(updatemenus=[dict(buttons=buttons, active=view.layers.index(layer), x=0.0, y=1.0,
                                            xanchor="left", yanchor="bottom", direction="down")])  # fmt: skip
        fig.update_layout(margin=dict(t=110))
    return attach_html_script(fig, HOVER_ISOLATION_JS)


def _add_head_lines(
    fig: go.Figure, weights: np.ndarray, y: np.ndarray, y_sources: np.ndarray, top: float, label: str, color: str
) -> None:
    """One trace per shade: segments separated by NaN gaps, so thousands of lines stay a few traces.
    A line-less trace carries the legend entry, drawn at full strength."""
    fig.add_trace(go.Scatter(
        x=[None], y=[None], mode="lines", line=dict(color=color, width=3), name=label, legendgroup=label,
    ))  # fmt: skip
    query, source = np.nonzero(weights >= _FAINTEST * top)
    relative = weights[query, source] / top
    lower = 0.0
    for upper, opacity, width in _SHADES:
        pick = (relative > lower) & (relative <= upper) if upper < 1.0 else relative > lower
        lower = upper
        if not pick.any():
            continue
        count = int(pick.sum())
        xs = np.tile(np.array([0.0, 1.0, np.nan], dtype=np.float32), count)
        ys = np.empty(3 * count, dtype=np.float32)
        ys[0::3], ys[1::3], ys[2::3] = y[query[pick]], y_sources[source[pick]], np.nan
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", line=dict(color=color, width=width), opacity=opacity,
            name=label, legendgroup=label, showlegend=False, hoverinfo="skip",
        ))  # fmt: skip


def _token_hovers(view: AttentionView, side: str) -> list[str]:
    """Per token: its three strongest links (over heads) and, for queries, what went outside the window."""
    weights = view.weights[0]  # [B, W, S]
    source_positions, source_tokens = view.sources
    labels = [f"{p} {display_token(t)}" for p, t in zip(view.positions, view.tokens)]
    others = [f"{p} {display_token(t)}" for p, t in zip(source_positions, source_tokens)]
    if side == "source":
        weights = weights.transpose(0, 2, 1)  # rows = sources, columns = queries reading them
        labels, others = others, labels
    n, m = weights.shape[1], weights.shape[2]
    flat = weights.transpose(1, 0, 2).reshape(n, -1)  # [rows, B * others]: row -> (head, other token)
    k = min(3, flat.shape[1])
    best = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(best, np.argsort(-np.take_along_axis(flat, best, 1), axis=1), 1)
    arrow = "→" if side == "query" else "←"
    where = view.positions if side == "query" else source_positions
    out = []
    for row in range(n):
        links = [
            f"{view.head_labels[c // m]} {arrow} {others[c % m]}: {flat[row, c]:.3g}"
            for c in best[row]
            if flat[row, c] > 0
        ]
        segment = "" if view.is_cross else _segment(view, int(where[row]))
        text = f"<b>{labels[row]}</b> ({side}{segment})<br>"
        text += "<br>".join(links or ["no link shown"])
        if side == "query" and view.positions[0] > 0 and not view.is_cross:
            text += f"<br>to tokens outside the window: {view.outside[0, :, row].mean():.3g} (mean over heads)"
        out.append(text)
    return out


def _segment(view: AttentionView, position: int) -> str:
    segment = view.segment(position)
    return f", sentence {segment}" if segment else ""


def _mark_split(fig: go.Figure, view: AttentionView, y: np.ndarray) -> None:
    """A dashed line between sentence A and B when the split falls inside the window."""
    if view.split is None or not view.positions[0] < view.split <= view.positions[-1]:
        return
    boundary = float(y[view.split - view.positions[0]]) + 0.5
    fig.add_shape(type="line", x0=-0.9, x1=1.9, y0=boundary, y1=boundary, line=dict(dash="dash", color="#888"))
    for text, dy in (("A", 0.9), ("B", -0.9)):
        fig.add_annotation(x=-0.85, y=boundary + dy, text=f"sentence {text}", showarrow=False, font=dict(color="#888"))


def _filters(view: AttentionView) -> str:
    parts = []
    if view.top_k is not None:
        parts.append(f"top {view.top_k} sources per query")
    if view.part != "all":
        parts.append(f"{view.part}")
    if view.positions[0] > 0 or view.split is not None:
        parts.append(f"tokens {view.positions[0]}–{view.positions[-1]}")
    return f"<br><sup>{', '.join(parts)}</sup>" if parts else ""


# --- model view --------------------------------------------------------------------------------


def model_view_figure(view: AttentionView, tile_px: int = 64, title: str | None = None) -> go.Figure:
    """Every chosen layer (rows) x head (columns) as a small query x source heatmap, in one trace.

    A marker at the centre of each tile carries ``customdata = [layer, head]`` so a click can open
    that head large (the app does)."""
    n_layers, n_cols, w, ws = view.weights.shape
    if view.weights.size > MAX_CELLS:
        raise ArgumentError(
            f"the model view would draw {view.weights.size:,} cells (at most {MAX_CELLS:,}): show fewer "
            f"layers or heads, or a window of at most {int((MAX_CELLS / (n_layers * n_cols)) ** 0.5)} tokens"
        )
    mosaic = view.weights.transpose(0, 2, 1, 3).reshape(n_layers * w, n_cols * ws)
    tokens = [f"{p} {display_token(t)}" for p, t in zip(view.positions, view.tokens)]
    sources = [f"{p} {display_token(t)}" for p, t in zip(*view.sources)]
    rows = [f"layer {layer} · query {token}" for layer in view.layers for token in tokens]
    cols = [f"{label} · source {token}" for label in view.head_labels for token in sources]
    fig = go.Figure(go.Heatmap(
        z=mosaic, x=cols, y=rows, colorscale=WEIGHTING_SCALES[view.weighting], zmin=0.0, zmax=strongest(view),
        colorbar=dict(title=dict(text=view.weighting, side="right"), thickness=12),
        hovertemplate="%{y}<br>%{x}<br>weight %{z:.3g}<extra></extra>",
    ))  # fmt: skip
    centre, centre_s = w // 2, ws // 2
    heads = (-1,) if view.aggregate else view.heads  # -1: no single head to open
    fig.add_trace(go.Scatter(
        x=[cols[b * ws + centre_s] for _ in view.layers for b in range(n_cols)],
        y=[rows[a * w + centre] for a in range(n_layers) for _ in range(n_cols)],
        customdata=[[layer, head] for layer in view.layers for head in heads],
        mode="markers", marker=dict(size=10, color="rgba(0,0,0,0)", symbol="square"),
        hovertext=[f"layer {layer}, {label}: click to open" for layer in view.layers for label in view.head_labels],
        hoverinfo="text", showlegend=False,
    ))  # fmt: skip
    # Tile borders, set at once (add_shape one by one re-validates every earlier shape).
    border = dict(type="line", line=dict(color="white", width=3))
    shapes = [dict(border, x0=k * ws - 0.5, x1=k * ws - 0.5, y0=-0.5, y1=n_layers * w - 0.5) for k in range(1, n_cols)]
    shapes += [dict(border, y0=k * w - 0.5, y1=k * w - 0.5, x0=-0.5, x1=n_cols * ws - 0.5) for k in range(1, n_layers)]
    tile = max(24, tile_px)
    fig.update_layout(
        title=title or f"All layers × heads: {WEIGHTING_NAMES[view.weighting]}" + _filters(view),
        width=max(420, n_cols * tile + 200),
        height=max(320, n_layers * tile + 140),
        margin=dict(l=70, r=20, t=90, b=20),
        plot_bgcolor="white",
        # fixed ranges: autorange pads category axes around the click markers
        xaxis=dict(side="top", tickvals=[cols[b * ws + centre_s] for b in range(n_cols)], range=[-0.5, n_cols * ws - 0.5],
                   ticktext=[label.replace("head ", "h") for label in view.head_labels], showgrid=False),
        yaxis=dict(range=[n_layers * w - 0.5, -0.5], tickvals=[rows[a * w + centre] for a in range(n_layers)],
                   ticktext=[f"L{layer}" for layer in view.layers], showgrid=False),
        clickmode="event+select",
        shapes=shapes,
    )  # fmt: skip
    return fig


# --- neuron view -------------------------------------------------------------------------------


def neuron_view_figure(view: NeuronView, title: str | None = None) -> go.Figure:
    """Query vector (top), then per source: key, q ⊙ k, the scaled score and the softmax weight."""
    sources = [f"{p} {display_token(t)}" for p, t in zip(view.positions, view.tokens)]
    dims = np.arange(view.query_vector.shape[0])
    query_px, gap_px, rows_px = 28, 50, 20 * len(sources)
    plot_px = query_px + gap_px + rows_px
    fig = make_subplots(
        rows=2, cols=4, row_heights=[query_px, rows_px], column_widths=[0.36, 0.36, 0.14, 0.14],
        vertical_spacing=gap_px / plot_px, horizontal_spacing=0.02,
        subplot_titles=(f"query q ({display_token(view.query_token)})", f"keys k (key head {view.kv_head})",
                        "q ⊙ k", _score_title(view), "softmax"),
        specs=[[{}, None, None, None], [{}, {}, {}, {}]],
    )  # fmt: skip
    vectors = max(float(np.abs(view.keys).max(initial=0)), float(np.abs(view.query_vector).max(initial=0)), 1e-9)
    fig.add_trace(_diverging(view.query_vector[None], dims, ["q"], vectors, "q[%{x}] = %{z:.3g}"), 1, 1)
    fig.add_trace(_diverging(view.keys, dims, sources, vectors, "%{y}<br>k[%{x}] = %{z:.3g}"), 2, 1)
    products = max(float(np.abs(view.products).max(initial=0)), 1e-9)
    fig.add_trace(_diverging(view.products, dims, sources, products, "%{y}<br>q[%{x}]·k[%{x}] = %{z:.3g}"), 2, 2)
    finite = view.scores[np.isfinite(view.scores)]
    scores = max(float(np.abs(finite).max(initial=0)), 1e-9)
    fig.add_trace(_column(np.where(np.isfinite(view.scores), view.scores, np.nan), sources, "RdBu_r", -scores, scores,
                          [f"{s:.2f}" if np.isfinite(s) else "masked" for s in view.scores],
                          "%{y}<br>score %{text}<br>q·k = %{customdata:.3g}", view.dots), 2, 3)  # fmt: skip
    fig.add_trace(_column(view.probabilities, sources, "Blues", 0.0, 1.0, [f"{p:.2f}" for p in view.probabilities],
                          "%{y}<br>softmax %{z:.4f}<br>model's weight %{customdata:.4f}", view.model_weights), 2, 4)  # fmt: skip
    for col in (2, 3, 4):
        fig.update_yaxes(showticklabels=False, row=2, col=col)
    for col in (1, 2, 3, 4):
        fig.update_yaxes(autorange="reversed", row=2, col=col)
        fig.update_xaxes(showticklabels=col < 3, row=2, col=col)
    fig.update_yaxes(showticklabels=False, row=1, col=1)
    fig.update_layout(
        title=title or (
            f"Layer {view.layer}, head {view.head}, query {view.query} {display_token(view.query_token)}"
            f"<br><sup>rotation: {view.rotation}; reproduces the model's weights to {view.max_error:.1g}"
            + (f"; {view.hidden_weight:.1%} of the weight is on sources not shown" if view.hidden_weight > 5e-4 else "")
            + "</sup>"
        ),
        height=plot_px + 140,
        width=1000,
        margin=dict(l=130, r=20, t=110, b=30),
        plot_bgcolor="white",
    )  # fmt: skip
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    return fig


def _score_title(view: NeuronView) -> str:
    title = f"q·k × {view.scale:.3g}"
    if view.softcap is not None:
        title = f"{view.softcap:g}·tanh({title}/{view.softcap:g})"
    return title


def _diverging(z: np.ndarray, x: np.ndarray, y: list[str], bound: float, hover: str) -> go.Heatmap:
    return go.Heatmap(z=z, x=x, y=y, colorscale="RdBu_r", zmin=-bound, zmax=bound, showscale=False,
                      hovertemplate=hover + "<extra></extra>")  # fmt: skip


def _column(z, y, scale, zmin, zmax, text, hover, extra) -> go.Heatmap:
    """A one-column heatmap with its values written in the cells."""
    return go.Heatmap(
        z=np.asarray(z, dtype=np.float32)[:, None], x=[0], y=y, colorscale=scale, zmin=zmin, zmax=zmax,
        showscale=False, text=np.array(text)[:, None], texttemplate="%{text}", customdata=np.asarray(extra)[:, None],
        hovertemplate=hover + "<extra></extra>",
    )  # fmt: skip

"""Figures of the Inside page: each stage's compact strips and expanded matrices, the overview's
flow from the tokens through the layers to the prediction, and the whole walk-through as one
standalone HTML page (formulas as MathML, which browsers draw without any script).

Every cell carries its value on hover. Signed numbers share one diverging scale per matrix
(blue below zero, red above, white at zero), probabilities a sequential one; cells the model masks
(−∞ before the softmax) are left grey. The chosen token's row is outlined.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from latex2mathml.converter import convert as latex_to_mathml
from plotly.subplots import make_subplots

from llm_flow.export import html_page
from llm_flow.figures.playground import sampling_figure
from llm_flow.views.inside import Matrix, Overview, Stage, Walkthrough
from llm_flow.views.tokens import display_token

_SIGNED = "RdBu_r"
_PROBABILITY = "Blues"
_MASKED = "#e6e6e6"
_HIGHLIGHT = "#e45756"
_COLORS = {"attention": "#4c78a8", "residual": "#9a9a9a", "ffn": "#d6608f"}  # as the route graph and anatomy
_ROW_PX, _STRIP_PX = 18, 26
_GRID_COLUMNS_UP_TO = 80  # matrices this narrow sit three to a row
_SAMPLING_BARS = 12


# --- stages ---------------------------------------------------------------------------------------


def strip_figure(stage: Stage) -> go.Figure:
    """The chosen token's vectors, one thin heat strip each, labelled on the left. Axes are laid
    out by hand (a page draws one of these per stage on every rerun; make_subplots is slow)."""
    strips = stage.strip
    heights = [_STRIP_PX + (18 if _labelled(m) or m.kind == "ids" else 0) for m in strips]
    gap, top = 6, 4
    plot_px = sum(heights) + gap * (len(strips) - 1)
    traces, layout, shapes = [], {}, []
    y = plot_px
    for k, (matrix, height) in enumerate(zip(strips, heights), start=1):
        suffix = "" if k == 1 else str(k)
        labels_px = 18 if _labelled(matrix) else 0
        domain = [(y - height) / plot_px, (y - labels_px) / plot_px]
        y -= height + gap
        for trace in _heatmap(matrix, show_text=matrix.kind == "ids" or matrix.columns is not None):
            trace.update(xaxis=f"x{suffix}", yaxis=f"y{suffix}")
            traces.append(trace)
        layout[f"yaxis{suffix}"] = dict(domain=domain, anchor=f"x{suffix}", tickvals=[0], ticktext=[_escape(matrix.name)],
                                        tickfont=dict(family="monospace", size=11), fixedrange=True)  # fmt: skip
        axis = dict(anchor=f"y{suffix}", fixedrange=True, showgrid=False, zeroline=False, showticklabels=False)
        if _labelled(matrix):
            axis.update(showticklabels=True, side="top", tickvals=list(range(len(matrix.columns))),
                        ticktext=[_escape(c) for c in matrix.columns], tickfont=dict(size=10))  # fmt: skip
        layout[f"xaxis{suffix}"] = axis
        if matrix.marked is not None:
            shapes.append(dict(type="rect", xref=f"x{suffix}", yref=f"y{suffix}", x0=matrix.marked - 0.5,
                               x1=matrix.marked + 0.5, y0=-0.5, y1=0.5, line=dict(color=_HIGHLIGHT, width=2)))  # fmt: skip
    return go.Figure(traces, dict(
        height=plot_px + top + 6, margin=dict(l=10, r=10, t=top, b=6), plot_bgcolor=_MASKED, font=dict(size=11),
        shapes=shapes, **layout,
    ))  # fmt: skip


def _labelled(matrix: Matrix) -> bool:
    """Columns named on the strip itself (tokens of the window, top vocabulary tokens)."""
    return matrix.columns is not None and len(matrix.columns) <= 24 and matrix.kind != "ids"


def detail_figure(stage: Stage) -> go.Figure | None:
    """The window's matrices of an expanded stage: narrow ones (per head) three to a row, wide
    ones (the model's width, the MLP's neurons) one to a row; the chosen token's row outlined.
    None when the stage has no matrices of its own (tokens, sampling)."""
    matrices = stage.detail
    if not matrices:
        return None
    columns = 3 if max(m.values.shape[1] for m in matrices) <= _GRID_COLUMNS_UP_TO else 1
    columns = min(columns, len(matrices))
    rows = -(-len(matrices) // columns)
    heights = [max(m.values.shape[0] for m in matrices[r * columns : (r + 1) * columns]) for r in range(rows)]
    row_px = [max(60, 24 + _ROW_PX * h) for h in heights]
    fig = make_subplots(
        rows=rows, cols=columns, subplot_titles=[_escape(m.name) for m in matrices], row_heights=row_px,
        horizontal_spacing=0.12 if columns > 1 else 0.02, vertical_spacing=min(0.3, 70 / sum(row_px)),
    )  # fmt: skip
    for k, matrix in enumerate(matrices):
        row, col = divmod(k, columns)
        for trace in _heatmap(matrix, show_text=False):
            fig.add_trace(trace, row=row + 1, col=col + 1)
        fig.update_yaxes(tickvals=list(range(len(matrix.rows))), ticktext=[_escape(r) for r in matrix.rows], autorange="reversed",
                         tickfont=dict(family="monospace", size=10), row=row + 1, col=col + 1)  # fmt: skip
        if matrix.columns is not None:
            fig.update_xaxes(tickvals=list(range(len(matrix.columns))), ticktext=[_escape(c) for c in matrix.columns],
                             tickangle=-60 if len(matrix.columns) > 4 else 0, tickfont=dict(size=9),
                             row=row + 1, col=col + 1)  # fmt: skip
        else:
            fig.update_xaxes(title_text="dimension", title_font=dict(size=10), tickfont=dict(size=9),
                             row=row + 1, col=col + 1)  # fmt: skip
        if matrix.highlight is not None:
            fig.add_hrect(y0=matrix.highlight - 0.5, y1=matrix.highlight + 0.5, line=dict(color=_HIGHLIGHT, width=2),
                          fillcolor="rgba(0,0,0,0)", row=row + 1, col=col + 1)  # fmt: skip
    fig.update_annotations(font_size=12)
    fig.update_layout(
        height=sum(row_px) + 90 * rows + 30, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor=_MASKED,
        font=dict(size=11),
    )  # fmt: skip
    fig.update_xaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    return fig


def stage_sampling_figure(walk: Walkthrough, bars: int = _SAMPLING_BARS) -> go.Figure:
    """The sampling stage expanded: the Playground's own four panels on this position's logits,
    the token a draw with the walk-through's seed picks outlined."""
    return sampling_figure(walk.sampling, walk.decode, n=min(bars, 40), chosen=walk.drawn)


def _heatmap(matrix: Matrix, show_text: bool) -> list[go.Heatmap]:
    """The matrix as a heatmap (its row and column, and value, on hover), and the cells the model
    masks drawn grey on top (they would read as zeros on a white paper background). Labels go out
    as numpy arrays and values through the hover template: per-cell Python lists are what makes
    plotly slow (a page draws thousands of cells on every rerun)."""
    values = matrix.values.astype(np.float64)
    masked = np.isneginf(values)
    z = np.where(masked, np.nan, values)
    n_rows, n_columns = values.shape
    columns = list(matrix.columns) if matrix.columns is not None else [f"dim {k}" for k in range(n_columns)]
    rows = np.array([_escape(r) + " · " for r in matrix.rows], dtype=object)
    hover = rows[:, None] + np.array([_escape(c) for c in columns], dtype=object)[None, :]  # [rows, columns]
    value = {"ids": "id %{z:d}", "probability": "%{z:.2%}"}.get(matrix.kind, "%{z:.4g}")
    common = dict(z=z, customdata=hover, showscale=False, hoverongaps=False, xgap=0, ygap=1,
                  hovertemplate=f"%{{customdata}}<br>{value}<extra></extra>")  # fmt: skip
    if matrix.kind == "ids":
        cells = [[f"{_escape(c.split(': ', 1)[-1])}<br>{int(v)}" for c, v in zip(columns, values[0])]]
        return [go.Heatmap(**common, text=cells, colorscale=[[0, "#f4f4f4"], [1, "#f4f4f4"]], texttemplate="%{text}",
                           textfont=dict(family="monospace", size=11))]  # fmt: skip
    if matrix.kind == "probability":
        text = [[f"{v:.0%}" if v >= 0.005 else "" for v in row] for row in values] if show_text else None
        heatmap = go.Heatmap(**common, text=text, colorscale=_PROBABILITY, zmin=0, zmax=1,
                             texttemplate="%{text}" if show_text else None, textfont=dict(size=10))  # fmt: skip
    else:
        finite = np.abs(values[~masked]) if (~masked).any() else np.zeros(1)
        bound = float(finite.max()) or 1.0
        written = show_text and n_columns <= 16
        text = [[f"{v:.2g}" for v in row] for row in np.where(masked, 0, values)] if written else None
        heatmap = go.Heatmap(**common, text=text, colorscale=_SIGNED, zmid=0, zmin=-bound, zmax=bound,
                             texttemplate="%{text}" if written else None, textfont=dict(size=10))  # fmt: skip
    if not masked.any():
        return [heatmap]
    grey = go.Heatmap(z=np.where(masked, 1.0, np.nan), colorscale=[[0, _MASKED], [1, _MASKED]], showscale=False,
                      hoverongaps=False, xgap=0, ygap=1, hovertemplate="−∞ (masked)<extra></extra>")  # fmt: skip
    return [heatmap, grey]


def _escape(text: str) -> str:
    """Plotly reads labels as a little HTML: a token such as "<" or "<br>" must stay text."""
    return html.escape(text, quote=False)


# --- the overview -----------------------------------------------------------------------------------


def overview_figure(view: Overview, layer: int | None = None) -> go.Figure:
    """A flow from the tokens through every layer to the prediction. Each layer's output is one
    node; the stream entering a layer splits into the residual carried through (grey), the
    attention (blue) and the FFN (pink), sized by their ALTI shares of the layer's output, and
    joins again; layer 0's attention is fed by the source tokens it read. Every block has an
    input, so plotly lays the columns out by layer. Below, one marker per layer (`customdata` =
    the layer) to click; `layer` is drawn darker."""
    n_layers = len(view.layers)
    pitch = 0.86 / n_layers
    labels, xs, ys, colors, hovers = [], [], [], [], []

    def node(label: str, x: float, y: float, color: str, hover: str) -> int:
        labels.append(_escape(label))
        xs.append(min(max(x, 0.001), 0.999))
        ys.append(min(max(y, 0.001), 0.999))
        colors.append(color)
        hovers.append(_escape(hover))
        return len(labels) - 1

    sources = [(j, label, share) for j, label, share in view.sources]
    source_nodes = {}
    for k, (j, label, _) in enumerate(sources):
        y = 0.05 + 0.9 * (k + 0.5) / len(sources)
        source_nodes[j] = node(label, 0.001, y, "#bab0ac" if j != view.position else "#79706e", f"token {label}")
    links: list[tuple[int, int, float, str, str]] = []  # source, target, value, colour, hover
    state = None
    for anatomy in view.layers:
        l = anatomy.layer
        block_x = 0.06 + (l + 0.5) * pitch
        attention = node("", block_x, 0.12, _COLORS["attention"], f"attention of layer {l}")
        ffn = node("", block_x, 0.88, _COLORS["ffn"], f"FFN of layer {l}")
        label = f"L{l}" if n_layers <= 12 else ""  # the markers below name them when there are many
        out = node(label, 0.06 + (l + 1) * pitch, 0.5, "#222222" if l == layer else "#79706e", f"output of layer {l}")
        shares = {"attention": anatomy.attention or 0.0, "ffn": anatomy.ffn or 0.0, "residual": anatomy.residual or 0.0}
        stream = source_nodes[view.position] if state is None else state  # the token's stream entering the layer
        if state is None:  # layer 0's attention reads the tokens themselves
            for j, name, share in sources:
                links.append((source_nodes[j], attention, share, _COLORS["attention"], f"{name} → attention of layer 0"))
        else:
            links.append((stream, attention, shares["attention"], _COLORS["attention"], f"into attention of layer {l}"))
        links.append((stream, ffn, shares["ffn"], _COLORS["ffn"], f"into the FFN of layer {l}"))
        links.append((stream, out, shares["residual"], _COLORS["residual"], f"residual carried through layer {l}"))
        links.append((attention, out, shares["attention"], _COLORS["attention"], f"attention of layer {l} → its output"))
        links.append((ffn, out, shares["ffn"], _COLORS["ffn"], f"FFN of layer {l} → its output"))
        state = out
    prediction = node(f"{display_token(view.prediction)} {view.probability:.0%}", 0.999, 0.5, "#e45756",
                      f"prediction {display_token(view.prediction)!r}: p = {view.probability:.1%}")  # fmt: skip
    links.append((state, prediction, 1.0, "#bbbbbb", "final norm → logits → probabilities"))
    kept = [link for link in links if link[2] > 1e-4]
    # plotly.js drops nodes without links and then matches the remaining x/y by index: keep only
    # linked nodes, renumbered, or every node after a dropped one moves
    used = sorted({k[0] for k in kept} | {k[1] for k in kept})
    index = {old: new for new, old in enumerate(used)}
    kept = [(index[a], index[b], *rest) for a, b, *rest in kept]
    labels, xs, ys, colors, hovers = ([values[k] for k in used] for values in (labels, xs, ys, colors, hovers))
    sankey = go.Sankey(
        arrangement="fixed", domain=dict(x=[0, 1], y=[0.16, 1]),
        node=dict(label=labels, x=xs, y=ys, color=colors, pad=6, thickness=12, customdata=hovers,
                  hovertemplate="%{customdata}<extra></extra>", line=dict(width=0)),
        link=dict(source=[k[0] for k in kept], target=[k[1] for k in kept], value=[k[2] for k in kept],
                  color=[_fade(k[3]) for k in kept], customdata=[_escape(k[4]) for k in kept],
                  hovertemplate="%{customdata}: %{value:.1%} of the layer's output<extra></extra>"),
    )  # fmt: skip
    marker_x = [0.06 + (l + 1) * pitch for l in range(n_layers)]
    markers = go.Scatter(
        x=marker_x, y=[0] * n_layers, mode="markers+text", text=[f"L{l}" for l in range(n_layers)],
        textposition="bottom center", customdata=list(range(n_layers)), cliponaxis=False, showlegend=False,
        marker=dict(size=13, symbol="square", color=["#222222" if l == layer else "#c9c9c9" for l in range(n_layers)]),
        hovertemplate="layer %{customdata}: click to walk through this block<extra></extra>",
    )  # fmt: skip
    fig = go.Figure([sankey, markers])
    fig.update_layout(
        height=330, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white", font=dict(size=11),
        xaxis=dict(range=[0, 1], visible=False, fixedrange=True, domain=[0, 1]),
        yaxis=dict(range=[-1, 1], visible=False, fixedrange=True, domain=[0, 0.12]),
        clickmode="event+select",
    )  # fmt: skip
    return fig


def _fade(color: str, alpha: float = 0.45) -> str:
    r, g, b = (int(color[k : k + 2], 16) for k in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# --- the whole walk-through as one page -----------------------------------------------------------


def walkthrough_page(walk: Walkthrough, view: Overview, prompt: str) -> str:
    """Standalone HTML: the overview, then every stage with its sentence, formula (MathML), what to
    notice, its strips and its matrices, each stage a ``<details>`` element open by default."""
    title = (f"Inside {walk.model}: {display_token(walk.token)!r} at token {walk.position}, "
             f"layer {walk.layer}, head {walk.head}")  # fmt: skip
    parts: list = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='prompt'>{html.escape(prompt)}</p>",
        "<p>The flow from the tokens through every layer to the prediction: each layer's output is made of the "
        "residual it carried in (grey), its attention (blue) and its FFN (pink), sized by their ALTI shares.</p>",
        overview_figure(view, walk.layer),
    ]
    group = None
    for stage in walk.stages:
        if stage.group != group:
            group = stage.group
            heading = {"input": "Input", "block": f"Block {walk.layer}", "output": "Output"}[group]
            parts.append(f"<h2>{heading}</h2>")
        parts.append(
            f"<details open><summary><b>{html.escape(stage.title)}</b></summary>"
            f"<p>{html.escape(stage.sentence)}</p>"
            f"<div class='formula'>{latex_to_mathml(stage.formula, display='block')}</div>"
            f"<p class='notice'>{html.escape(stage.notice)}</p>"
        )  # fmt: skip
        parts.append(strip_figure(stage))
        detail = stage_sampling_figure(walk) if stage.key == "sampling" else detail_figure(stage)
        if detail is not None:
            parts.append(detail)
        parts.append("</details>")
    return html_page(parts, title, style=_PAGE_STYLE)


_PAGE_STYLE = """
body { font-family: Arial, Helvetica, sans-serif; max-width: 1200px; margin: 1em auto; color: #222; }
.prompt { font-family: monospace; background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }
details { border: 1px solid #ddd; border-radius: 6px; padding: 0.4em 0.8em; margin: 0.6em 0; }
summary { cursor: pointer; font-size: 1.1em; }
.formula { margin: 0.6em 0; font-size: 1.15em; }
.notice { color: #555; font-style: italic; }
"""

"""Heatmaps of per-component statistics over a dataset: attention heads as layers x heads, FFN
blocks as one column beside them.

Every cell's ``customdata`` is its component id (``L3.H5``, ``L3.FFN``): a click names the
component the page then lists prompts for. A difference grid (two folders) is drawn on a
diverging scale centred on zero.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llm_flow.dataset.reduce import Component, parse_component_id
from llm_flow.dataset.results import EXPERT_METRICS, METRICS, ComponentGrid, ExpertGrid

_SEQUENTIAL = "Blues"
_DIVERGING = "RdBu_r"  # red: larger in the first folder; blue: larger in the second
_ROW_PX = 17


def component_heatmap(grid: ComponentGrid, difference: bool = False, selected: str | None = None) -> go.Figure:
    """Heads (layers x heads) and FFN blocks (one column) of `grid`; `selected` is outlined.

    Frequencies share one colour scale (both are shares of route graphs). Contributions get one
    scale each: an FFN block's summed parts over every position it acts at dwarf a single head's.
    """
    n_layers, n_heads = grid.heads.shape
    layers = list(range(n_layers))
    head_ids = np.array([[Component("head", l, h).id for h in range(n_heads)] for l in layers])  # [L, H]
    ffn_ids = np.array([[Component("ffn", l).id] for l in layers])  # [L, 1]
    shared = grid.metric == "frequency"
    scales = [np.concatenate([grid.heads.ravel(), grid.ffn])] if shared else [grid.heads.ravel(), grid.ffn]
    label = METRICS[grid.metric].split(" (")[0]
    hover = "%{customdata[0]}<br>" + ("difference in " if difference else "") + label + ": %{customdata[1]:.3f}<extra></extra>"

    figure = make_subplots(
        rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.03,
        column_widths=[n_heads / (n_heads + 1.6), 1.6 / (n_heads + 1.6)],
        subplot_titles=("Attention heads", "FFN"),
    )  # fmt: skip
    for col, (z, x, ids, name) in enumerate(
        [(grid.heads, [f"H{h}" for h in range(n_heads)], head_ids, "heads"), (grid.ffn[:, None], ["FFN"], ffn_ids, "FFN")], 1
    ):
        figure.add_trace(
            go.Heatmap(
                z=z, x=x, y=layers, customdata=ids, coloraxis="coloraxis" if shared or col == 1 else "coloraxis2",
                hoverinfo="skip", xgap=1, ygap=1, name=name,
            ),  # fmt: skip
            row=1, col=col,
        )  # fmt: skip
        figure.add_trace(_click_targets(z, x, layers, ids, hover, name), row=1, col=col)
    for k, values in enumerate(scales):
        title = "" if shared else ("heads", "FFN")[k]
        figure.update_layout({
            ("coloraxis" if k == 0 else "coloraxis2"): dict(
                colorbar=dict(title=dict(text=title), thickness=12, x=1.02 + 0.13 * k), **_scale(values, difference)
            )
        })  # fmt: skip
    if selected is not None:
        _outline(figure, selected)
    class_note = "" if grid.position_class == "all" else f", position class: {grid.position_class}"
    figure.update_layout(
        title=dict(text=f"{grid.title}<br><sup>{('difference in ' if difference else '') + label}{class_note}</sup>"),
        height=max(320, 140 + _ROW_PX * n_layers),
        margin=dict(l=60, r=40 if shared else 110, t=90, b=40),
        plot_bgcolor="white",
        clickmode="event+select",
    )
    # fixed ranges: the click markers would otherwise pad the axes beyond the cells
    figure.update_yaxes(range=[-0.5, n_layers - 0.5], dtick=max(1, n_layers // 15))
    figure.update_yaxes(title_text="layer", row=1, col=1)
    figure.update_xaxes(range=[-0.5, n_heads - 0.5], row=1, col=1)
    figure.update_xaxes(range=[-0.5, 0.5], row=1, col=2)
    return figure


def _click_targets(z: np.ndarray, x: list[str], layers: list[int], ids: np.ndarray, hover: str, name: str) -> go.Scatter:
    """An invisible marker at every cell's centre, carrying [component id, value].

    Plotly reports clicks on heatmap cells as plain click events, which Streamlit does not turn
    into a selection; a click on a scatter point is a selection, so these markers make every
    cell clickable (and give the hover text).
    """
    rows, cols = np.indices(z.shape)  # [L, C] each
    invisible = dict(marker=dict(opacity=0))
    return go.Scatter(
        x=[x[c] for c in cols.ravel()], y=[layers[r] for r in rows.ravel()], mode="markers",
        customdata=[[cid, float(v)] for cid, v in zip(ids.ravel(), z.ravel())], hovertemplate=hover,
        marker=dict(size=14, opacity=0, color="black"), selected=invisible, unselected=invisible,
        showlegend=False, name=f"{name} (click)",
    )  # fmt: skip


def _scale(values: np.ndarray, difference: bool) -> dict:
    if difference:
        bound = float(np.abs(values).max()) or 1.0
        return dict(colorscale=_DIVERGING, cmin=-bound, cmax=bound, cmid=0.0)
    return dict(colorscale=_SEQUENTIAL, cmin=0.0, cmax=float(values.max()) or 1.0)


def _outline(figure: go.Figure, component_id: str) -> None:
    """A black frame around the selected cell (ignored if the id is not a head or FFN block)."""
    try:
        component = parse_component_id(component_id)
    except ValueError:
        return
    if component.kind == "residual":
        return
    x, axes = (component.head, ("x", "y")) if component.kind == "head" else (0, ("x2", "y2"))
    figure.add_shape(
        type="rect", xref=axes[0], yref=axes[1], x0=x - 0.5, x1=x + 0.5,
        y0=component.layer - 0.5, y1=component.layer + 0.5, line=dict(color="black", width=2),
    )  # fmt: skip


def expert_heatmap(grid: ExpertGrid) -> go.Figure:
    """A mixture of experts' layers x experts (the shared expert last, when there is one)."""
    labels = ["shared" if expert < 0 else f"E{expert}" for expert in grid.experts]
    label = EXPERT_METRICS[grid.metric].split(" (")[0]
    figure = go.Figure(go.Heatmap(
        z=grid.values, x=labels, y=grid.layers, xgap=1, ygap=1, colorbar=dict(thickness=12),
        hovertemplate="layer %{y}, %{x}<br>" + label + ": %{z:.3f}<extra></extra>",
        colorscale=_SEQUENTIAL, zmin=0.0, zmax=float(grid.values.max()) or 1.0,
    ))  # fmt: skip
    figure.update_layout(
        title=dict(text=f"{grid.title}<br><sup>experts: {label}</sup>"),
        height=max(280, 140 + _ROW_PX * len(grid.layers)),
        margin=dict(l=60, r=40, t=90, b=40),
        plot_bgcolor="white",
        xaxis_title="expert",
        yaxis_title="layer",
    )
    figure.update_yaxes(dtick=max(1, len(grid.layers) // 15))
    return figure

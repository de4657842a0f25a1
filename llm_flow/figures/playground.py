"""Figures of the next-token playground: the sampling stages and the anatomy of one prediction.

Every anatomy point carries the route-graph node it stands for in ``customdata`` (``A{l}_i``
attention, ``M{l}_i`` FFN, ``I{l}_i`` the residual after the layer, ``X_i`` the embedding), so a
click can open that node in the Explorer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from llm_flow.export import short_prompt, title_text
from llm_flow.routes.nodes import NodeId
from llm_flow.views.anatomy import Anatomy
from llm_flow.views.sampling import SamplingStages
from llm_flow.views.tokens import display_token
from llm_flow.wording import probability

_COLORS = {"attention": "#4c78a8", "residual": "#9a9a9a", "ffn": "#d6608f"}  # as the route graph
_KEPT, _CUT, _CHOSEN, _LOGIT = "#4c78a8", "#d9d9d9", "#e45756", "#72b7b2"


def shown_tokens(stages: SamplingStages, n: int, chosen: int | None = None) -> list[int]:
    """The `n` tokens with the highest logits (best first), plus `chosen` if it is not among them."""
    ids = torch.topk(stages.logits, min(n, stages.logits.shape[-1])).indices.tolist()
    return ids if chosen is None or chosen in ids else [*ids, chosen]


def sampling_figure(
    stages: SamplingStages,
    decode_tokens: Callable[[list[int]], list[str]],
    n: int = 15,
    chosen: int | None = None,
) -> go.Figure:
    """Four panels over the same tokens: logits, probabilities after temperature, after top-k,
    after top-p (the distribution drawn from). A filtered panel shows the tokens it cut in grey,
    at the probability they had before the cut; `chosen` is outlined in red."""
    ids = shown_tokens(stages, n, chosen)
    labels = _unique_labels([display_token(t) for t in decode_tokens(ids)], ids)
    settings = stages.settings
    tempered = torch.softmax(stages.scaled, -1)
    after_k = torch.softmax(stages.after_top_k, -1)
    if settings.greedy:
        titles = ["logits", "temperature 0: greedy", "top-k: not used", "top-p: not used"]
        panels = [(stages.probs, stages.cut_by_greedy, tempered)] * 3
    else:
        titles = [
            "logits",
            f"softmax(logits / {settings.temperature:g})",
            f"top-k {settings.top_k}" if settings.top_k else "top-k: off",
            f"top-p {settings.top_p:g}" if settings.top_p < 1 else "top-p: off",
        ]
        no_cut = torch.zeros_like(stages.cut_by_top_k)
        panels = [(tempered, no_cut, tempered), (after_k, stages.cut_by_top_k, tempered),
                  (stages.probs, stages.cut_by_top_p, after_k)]  # fmt: skip
    gone = torch.zeros_like(stages.kept)  # cut by an earlier panel: shown empty, marked "–"
    fig = make_subplots(rows=1, cols=4, shared_yaxes=True, subplot_titles=titles, horizontal_spacing=0.03)
    outline = [2.5 if i == chosen else 0 for i in ids]
    line = dict(width=outline, color=_CHOSEN)
    logits = stages.logits[ids].tolist()
    fig.add_trace(
        go.Bar(
            x=logits, y=labels, orientation="h", marker=dict(color=_LOGIT, line=line), showlegend=False,
            customdata=ids, hovertemplate="%{y}<br>id %{customdata}<br>logit %{x:.3f}<extra></extra>",
        ),
        row=1, col=1,
    )  # fmt: skip
    for col, (probs, cut, before) in enumerate(panels, start=2):
        cut_ids, gone_ids = cut[ids].tolist(), gone[ids].tolist()
        values = [float(before[i]) if c else float(probs[i]) for i, c in zip(ids, cut_ids)]
        words = ["–" if g else "cut" if c else f"{v:.1%}" for v, c, g in zip(values, cut_ids, gone_ids)]
        gone = gone | cut
        fig.add_trace(
            go.Bar(
                x=values, y=labels, orientation="h", showlegend=False, text=words, textposition="outside",
                cliponaxis=False, customdata=ids,
                marker=dict(color=[_CUT if c else _KEPT for c in cut_ids], line=line),
                hovertemplate="%{y}<br>id %{customdata}<br>%{text} (%{x:.4f})<extra></extra>",
            ),
            row=1, col=col,
        )  # fmt: skip
        fig.update_xaxes(range=[0, 1.25 * max(max(values), 1e-6)], tickformat=".0%", nticks=4, row=1, col=col)
    fig.update_yaxes(autorange="reversed", tickfont=dict(family="monospace", size=12))
    fig.update_layout(
        height=max(260, 60 + 22 * len(ids)), margin=dict(l=10, r=10, t=40, b=10),
        plot_bgcolor="white", bargap=0.25, font=dict(size=12),
    )  # fmt: skip
    return fig


def _unique_labels(labels: list[str], ids: list[int]) -> list[str]:
    """Axis labels, one per bar: tokens that read the same (stray bytes show as �) get their id."""
    seen = {label: labels.count(label) for label in labels}
    return [f"{label} #{i} " if seen[label] > 1 else f"{label} " for label, i in zip(labels, ids)]


def anatomy_figure(result: Anatomy) -> go.Figure:
    """The layer strip: what made up the residual after each layer (stacked shares), its norm,
    and the explained token's rank under the logit lens, with the lens's top token as a label."""
    rows = result.rows
    position = result.position
    x = ["emb" if r.layer < 0 else f"L{r.layer}" for r in rows]
    layers = result.layers
    lx = x[1:]
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.45, 0.2, 0.35],
        subplot_titles=["what makes up the residual after each layer",
                        "residual norm",
                        f"rank of {display_token(result.target)} under the logit lens (labels: the lens's top token)"],
    )  # fmt: skip
    attention_nodes = [
        str(NodeId("I" if result.parallel else "A", r.layer, position)) for r in layers
    ]  # parallel blocks have no node of their own for attention
    parts = [
        ("residual carried in", [r.residual for r in layers], [r.node for r in layers], _COLORS["residual"]),
        ("attention", [r.attention for r in layers], attention_nodes, _COLORS["attention"]),
        ("FFN", [r.ffn for r in layers], [str(NodeId("M", r.layer, position)) for r in layers], _COLORS["ffn"]),
    ]
    for name, values, nodes, color in parts:
        fig.add_trace(
            go.Bar(
                x=lx, y=values, name=name, marker_color=color, customdata=nodes,
                hovertemplate=f"%{{x}} {name}: %{{y:.1%}}<br>%{{customdata}}<extra></extra>",
            ),
            row=1, col=1,
        )  # fmt: skip
    nodes = [r.node for r in rows]
    fig.add_trace(
        go.Scatter(
            x=x, y=[r.norm for r in rows], mode="lines+markers", name="‖residual‖", customdata=nodes,
            line=dict(color="#79706e"), hovertemplate="%{x} ‖residual‖ %{y:.2f}<br>%{customdata}<extra></extra>",
        ),
        row=2, col=1,
    )  # fmt: skip
    lens = [f"{display_token(r.lens_token)} {r.lens_probability:.0%}" for r in rows]
    fig.add_trace(
        go.Scatter(
            x=x, y=[r.target_rank for r in rows], mode="lines+markers+text", name="lens",
            text=_changes([display_token(r.lens_token) for r in rows]), textposition="top center",
            textfont=dict(size=10, family="monospace"), customdata=nodes, line=dict(color=_COLORS["attention"]),
            hovertext=[f"{r.node}: rank {r.target_rank}, p {probability(r.target_probability)}<br>lens top: {t}"
                       for r, t in zip(rows, lens)],
            hoverinfo="text", showlegend=False,
        ),
        row=3, col=1,
    )  # fmt: skip
    fig.update_xaxes(categoryorder="array", categoryarray=x)  # "emb" first on every panel
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=1)
    deepest = math.log10(max(r.target_rank for r in rows))
    fig.update_yaxes(type="log", range=[deepest + 0.3, -0.5], title_text="rank", row=3, col=1)  # rank 1 on top
    fig.update_layout(
        barmode="stack", height=600, margin=dict(l=10, r=10, t=40, b=50), plot_bgcolor="white",
        clickmode="event+select", legend=dict(orientation="h", yanchor="top", y=-0.06, x=0),
        font=dict(size=12),
    )  # fmt: skip
    return fig


def anatomy_title(model: str, prompt: str, result: Anatomy) -> str:
    """The title of an exported anatomy figure: which prediction of which prompt, by which model."""
    token, target = (title_text(repr(display_token(t))) for t in (result.token, result.target))
    return (
        f"{title_text(model)}: anatomy of the prediction {token} → {target} at token {result.position} "
        f"of {title_text(repr(short_prompt(prompt)))}"
    )


def _changes(labels: list[str]) -> list[str]:
    """Each label only where it differs from the one before: the lens's top token as it changes."""
    return [label if k == 0 or label != labels[k - 1] else "" for k, label in enumerate(labels)]


def heads_figure(result: Anatomy) -> go.Figure:
    """Per-head split of the attention share: heads × layers, each cell a share of the residual
    after the layer (the expanded detail of the strip's attention bars)."""
    layers = result.layers
    n_heads = len(layers[0].heads)
    z = [[r.heads[h] for r in layers] for h in range(n_heads)]  # [H, L]
    nodes = [[str(NodeId("I" if result.parallel else "A", r.layer, result.position)) for r in layers]] * n_heads
    fig = go.Figure(
        go.Heatmap(
            z=z, x=[f"L{r.layer}" for r in layers], y=[f"H{h}" for h in range(n_heads)], customdata=nodes,
            colorscale="Blues", zmin=0, colorbar=dict(title="share", tickformat=".0%"),
            hovertemplate="%{x} %{y}: %{z:.1%}<br>%{customdata}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_layout(height=max(200, 40 + 18 * n_heads), margin=dict(l=10, r=10, t=10, b=10))
    fig.update_yaxes(autorange="reversed")
    return fig

"""Attribution figures: a token x token heatmap (rows: generated tokens; columns: the prompt and
the continuation before each of them) and the text of one step coloured by its scores."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llm_flow.attribution.result import Attribution
from llm_flow.views.tokens import display_token
from llm_flow.wording import probability

#: Above this many columns only every k-th source label is written on the axis.
MAX_LABELS = 60
_POSITIVE = (214, 39, 40)
_NEGATIVE = (31, 119, 180)
_SCALE_WORDS = {
    "sum": "signed: red raised the explained output, blue lowered it",
    "norm": "gradient norm: larger means more sensitive",
    "share": "share of the prediction's representation: each row sums to 1",
}


def target_labels(result: Attribution) -> list[str]:
    """``3 ·Paris  p=0.77``: step, token, and the probability the model gave it."""
    probabilities = result.step_scores["probability"]
    return [f"{step} {display_token(token)}  p={probability(p)}" for step, (token, p) in enumerate(zip(result.targets, probabilities))]


def attribution_heatmap(result: Attribution, title: str | None = None) -> go.Figure:
    """The scores as a heatmap; blank cells are sources a step cannot see (at or after its
    target). Signed methods use a diverging scale centred on 0."""
    sources = [display_token(s) for s in result.sources]
    n_columns = len(sources)
    signed = result.scale == "sum"
    limit = float(np.nanmax(np.abs(result.scores))) if np.isfinite(result.scores).any() else 1.0
    hover = np.array([[f"{t} ← {s}" for s in sources] for t in result.targets], dtype=object)
    figure = go.Figure(go.Heatmap(
        z=result.scores, x=list(range(n_columns)), y=list(range(result.n_steps)),
        customdata=hover, hovertemplate="%{customdata}: %{z:.4g}<extra></extra>",
        colorscale="RdBu_r" if signed else "Reds", zmid=0 if signed else None,
        zmin=-limit if signed else 0, zmax=limit or 1.0, hoverongaps=False,
        colorbar=dict(title=dict(text="score", side="right"), thickness=12),
    ))  # fmt: skip
    every = max(1, -(-n_columns // MAX_LABELS))
    ticks = list(range(0, n_columns, every))
    pair = result.n_source is not None  # an encoder–decoder: source tokens, then the decoder's
    figure.update_xaxes(tickvals=ticks, ticktext=[sources[c] for c in ticks], tickangle=-60, showgrid=False,
                        title_text="source | decoder start, target prefix" if pair else "source (prompt | continuation)")  # fmt: skip
    figure.update_yaxes(tickvals=list(range(result.n_steps)), ticktext=target_labels(result),
                        autorange="reversed", title_text="target token" if pair else "generated token", showgrid=False)  # fmt: skip
    boundary = result.n_prompt_columns - 0.5
    if boundary < n_columns - 0.5:
        figure.add_vline(x=boundary, line=dict(color="#444", width=1, dash="dot"))
    what = result.method.replace("_", " ")
    contrast = f" vs {display_token(result.foil)}" if result.foil else ""
    explained = f" of the {result.function}{' difference' if result.foil else ''}{contrast}" if result.function else ""
    figure.update_layout(
        title=dict(text=title or f"{what}{explained} — {_SCALE_WORDS[result.scale]}", font=dict(size=14)),
        height=max(260, 120 + 26 * result.n_steps), margin=dict(l=10, r=10, t=50, b=10),
        plot_bgcolor="white", paper_bgcolor="white",
    )  # fmt: skip
    return figure


def attribution_figure(result: Attribution, title: str | None = None) -> go.Figure:
    """Inseq's view: the heatmap of `attribution_heatmap`, and beside it the step scores of
    every generated token (probability, logit, entropy; with a foil its scores and the
    differences), each column shaded on its own scale with the value written in the cell."""
    heat = attribution_heatmap(result, title)
    names = list(result.step_scores)
    share = min(0.45, 0.05 + 0.06 * len(names))  # the step scores' part of the width
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[1 - share, share], horizontal_spacing=0.09)
    fig.add_trace(heat.data[0], 1, 1)
    fig.update_xaxes(heat.layout.xaxis, row=1, col=1)
    fig.update_yaxes(heat.layout.yaxis, row=1, col=1)
    for shape in heat.layout.shapes:
        fig.add_shape(shape, row=1, col=1)
    fig.update_traces(colorbar=dict(x=fig.layout.xaxis.domain[1] + 0.01, xanchor="left"), row=1, col=1)
    values = np.array([result.step_scores[name] for name in names], dtype=float).T  # [steps, scores]
    low, high = np.nanmin(values, 0), np.nanmax(values, 0)
    shade = (values - low) / np.where(high > low, high - low, 1.0)
    fig.add_trace(go.Heatmap(
        z=shade, x=[name.replace("_", " ") for name in names], y=list(range(result.n_steps)),
        text=np.vectorize(lambda v: f"{v:.3g}")(values), texttemplate="%{text}", customdata=values,
        colorscale="Greys", zmin=0.0, zmax=1.6, showscale=False,
        hovertemplate="%{x}: %{customdata:.4g}<extra></extra>",
    ), 1, 2)  # fmt: skip
    fig.update_xaxes(side="top", tickangle=-30, showgrid=False, row=1, col=2)
    fig.update_layout(title=heat.layout.title, height=heat.layout.height + 40, margin=heat.layout.margin,
                      plot_bgcolor="white", paper_bgcolor="white")  # fmt: skip
    return fig


def step_html(result: Attribution, step: int) -> str:
    """The text step `step` saw, each source's background coloured by its score (red up, blue
    down; intensity relative to the step's largest magnitude), then the target token outlined."""
    row = result.step_row(step)
    peak = float(np.max(np.abs(row))) if row.size else 0.0
    spans = []
    for text, score in zip(result.sources, row):
        strength = abs(score) / peak if peak > 0 else 0.0
        red, green, blue = _POSITIVE if score >= 0 else _NEGATIVE
        spans.append(
            f'<span title="{score:.4g}" style="background: rgba({red},{green},{blue},{strength:.3f}); '
            f'border-radius: 3px; padding: 1px 0">{_text(text)}</span>'
        )
    target = result.targets[step % result.n_steps]
    spans.append(
        f'<span style="outline: 2px solid #222; border-radius: 3px; padding: 1px 2px" '
        f'title="target">{_text(target)}</span>'
    )
    return ('<div style="font-family: ui-monospace, monospace; font-size: 15px; line-height: 1.9; '
            'white-space: pre-wrap">' + "".join(spans) + "</div>")  # fmt: skip


def standalone_html(result: Attribution) -> str:
    """A standalone HTML page: the heatmap (plotly included) and every step's coloured text."""
    figure = attribution_heatmap(result).to_html(full_html=False, include_plotlyjs=True)
    steps = "".join(
        f"<h3>{html.escape(label)}</h3>{step_html(result, step)}"
        for step, label in enumerate(target_labels(result))
    )
    title = html.escape(f"{result.method} — {result.model}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body style='font-family: sans-serif; background: white'><h2>{title}</h2>{figure}{steps}</body></html>")  # fmt: skip


def _text(token: str) -> str:
    return html.escape(token).replace("\n", "↵<br>")

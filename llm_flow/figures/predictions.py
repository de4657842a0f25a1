"""What the model predicts after every token of a Run: its top next tokens as a heatmap."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch

from llm_flow.models.run import Run
from llm_flow.views.tokens import display_token

MAX_COLUMNS = 400  # positions drawn; a longer prompt shows its last ones


def predictions_figure(run: Run, k: int = 5) -> go.Figure:
    """Columns are positions (the prompt's tokens), rows the model's k most likely next tokens
    after each, coloured by probability; a cell's text is the predicted token."""
    start = max(0, run.n_tokens - MAX_COLUMNS)
    probs = torch.softmax(run.rows_logits(range(start, run.n_tokens)), dim=-1)
    top = torch.topk(probs, min(k, probs.shape[-1]), dim=-1)  # [W, k]
    names = np.array(run.model.decode_tokens(top.indices.flatten().tolist()), dtype=object).reshape(top.indices.shape)
    labels = [f"{p} {display_token(run.str_tokens[p])}" for p in range(start, run.n_tokens)]
    text = np.vectorize(display_token, otypes=[object])(names).T  # [k, W]
    fig = go.Figure(go.Heatmap(
        z=top.values.T.numpy(), x=labels, y=[f"top {r + 1}" for r in range(top.indices.shape[1])],
        text=text, texttemplate="%{text}", colorscale="Blues", zmin=0.0, zmax=1.0,
        hovertemplate="after %{x}<br>%{text}: p = %{z:.3f}<extra></extra>",
        colorbar=dict(title=dict(text="probability", side="right"), thickness=12),
    ))  # fmt: skip
    shown = f" (the last {MAX_COLUMNS} positions)" if start else ""
    fig.update_layout(
        title=dict(text=f"{run.model.name}: the next token predicted after each token{shown}", font=dict(size=14)),
        height=140 + 34 * top.indices.shape[1], width=max(600, min(1600, 90 * len(labels))),
        margin=dict(l=10, r=10, t=50, b=10), plot_bgcolor="white",
        yaxis=dict(autorange="reversed"), xaxis=dict(tickangle=-45),
    )  # fmt: skip
    return fig

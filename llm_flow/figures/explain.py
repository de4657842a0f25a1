"""The Explorer's main view as one figure: the route graph, and beside it the next-token table and
the route's top heads and FFN blocks (what `llm_flow.explain` shows in a notebook)."""

from __future__ import annotations

import networkx as nx
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llm_flow.figures.route import figure_height, route_figure
from llm_flow.views.tokens import display_token

_HEADER = dict(fill_color="#f0f0f0", align="left", font=dict(size=12))
_CELLS = dict(align="left", font=dict(size=12), height=22)


def explain_figure(
    graph: nx.DiGraph, title: str, predictions: pd.DataFrame, heads: pd.DataFrame, ffns: pd.DataFrame
) -> go.Figure:
    """`route_figure` on the left; on the right the tables `predictions` (token, probability),
    `heads` (layer, head, weight) and `ffns` (layer, position, token, weight), a few rows each."""
    fig = make_subplots(
        rows=3, cols=2, column_widths=[0.66, 0.34], horizontal_spacing=0.04, vertical_spacing=0.06,
        specs=[[{"rowspan": 3}, {"type": "table"}], [None, {"type": "table"}], [None, {"type": "table"}]],
        subplot_titles=("", "Next token", "Top heads on the route", "Top FFN blocks on the route"),
    )  # fmt: skip
    route = route_figure(graph)
    for trace in route.data:
        fig.add_trace(trace, 1, 1)
    fig.update_xaxes(route.layout.xaxis, row=1, col=1)
    fig.update_yaxes(route.layout.yaxis, row=1, col=1)
    tables = (
        (["token", "probability"], [[display_token(t) for t in predictions["token"]], _percent(predictions["probability"])]),
        (["layer", "head", "weight"], [heads["layer"], heads["head"], _rounded(heads["weight"])]),
        (["layer", "token", "weight"], [ffns["layer"], [f"{p} {display_token(t)}" for p, t in zip(ffns["position"], ffns["token"])],
                                        _rounded(ffns["weight"])]),
    )  # fmt: skip
    for row, (header, columns) in enumerate(tables, start=1):
        fig.add_trace(go.Table(header=dict(values=header, **_HEADER), cells=dict(values=columns, **_CELLS)), row, 2)
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)), height=max(620, figure_height(graph) + 60),
        margin=dict(l=10, r=10, t=70, b=10), plot_bgcolor="white", hovermode="closest", dragmode="pan",
        legend=dict(orientation="h", yanchor="top", y=-0.06, x=0, font=dict(size=11)),
    )  # fmt: skip
    return fig


def _percent(values) -> list[str]:
    return [f"{v:.1%}" for v in values]


def _rounded(values) -> list[str]:
    return [f"{v:.3f}" for v in values]

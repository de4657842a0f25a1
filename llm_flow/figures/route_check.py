"""Figures of a route check: the target token's probability per condition with the random draws
as points, and the route-only probability as the threshold varies.

Probabilities after an ablation span many orders of magnitude (0.8 unmodified, 1e-9 after a
random removal), so both figures use a logarithmic probability axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import plotly.graph_objects as go

from llm_flow.interventions.route_checks import RouteCheck
from llm_flow.wording import probability

_ROUTE, _RANDOM, _BASE = "#4c78a8", "#9d9d9d", "#54a24b"


def route_check_figure(check: RouteCheck) -> go.Figure:
    """Bars: unmodified, route only, route removed; points: every random draw, beside its bar."""
    conditions = ["unmodified", "route only", "random only", "route removed", "random removed"]
    fig = go.Figure(go.Bar(
        x=conditions[:2] + conditions[3:4],
        y=[check.unmodified.probability, check.route_only.probability, check.route_removed.probability],
        marker_color=[_BASE, _ROUTE, _ROUTE], name="this route", showlegend=False,
        customdata=[probability(o.probability) for o in (check.unmodified, check.route_only, check.route_removed)],
        hovertemplate="%{x}: p = %{customdata}<extra></extra>",
    ))  # fmt: skip
    for name, draws in (("random only", check.random_only), ("random removed", check.random_removed)):
        probs = sorted(o.probability for o in draws)
        fig.add_trace(go.Box(
            x=[name] * len(probs), y=probs, boxpoints="all", jitter=0.5, pointpos=0, fillcolor="rgba(0,0,0,0)",
            line_color=_RANDOM, marker=dict(color=_RANDOM, size=6), name=name, showlegend=False,
            customdata=[probability(p) for p in probs],
            hovertemplate=f"{name} (random draw): p = %{{customdata}}<extra></extra>",
        ))  # fmt: skip
    fig.update_layout(
        height=280, margin=dict(l=10, r=10, t=30, b=10), bargap=0.35,
        title=dict(text=f"p({check.token!r}) at token {check.position}; {len(check.random_only)} random draws",
                   font_size=13),
        yaxis=_log_axis([o.probability for o in (check.unmodified, check.route_only, check.route_removed,
                                                  *check.random_only, *check.random_removed)]),
        xaxis=dict(categoryorder="array", categoryarray=conditions),
    )  # fmt: skip
    return fig


def threshold_curve_figure(curve: pd.DataFrame, unmodified: float | None = None) -> go.Figure:
    """Route-only probability against the threshold (from `threshold_curve`); the dashed line is
    the unmodified probability. Hover shows the route's size."""
    fig = go.Figure(go.Scatter(
        x=curve["threshold"], y=curve["probability"], mode="lines+markers", line_color=_ROUTE,
        customdata=curve[["edges", "parts", "rank"]].assign(p=curve["probability"].map(probability)).to_numpy(),
        name="route only",
        hovertemplate="threshold %{x}<br>p = %{customdata[3]} (rank %{customdata[2]})<br>"
                      "%{customdata[0]} edges, %{customdata[1]} parts<extra></extra>",
    ))  # fmt: skip
    if unmodified is not None:
        fig.add_hline(y=unmodified, line_dash="dash", line_color=_BASE, annotation_text="unmodified",
                      annotation_position="bottom right")  # fmt: skip
    fig.update_layout(
        height=280, margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
        title=dict(text="Route only, as the threshold varies", font_size=13),
        xaxis_title="contribution threshold", yaxis=_log_axis([*curve["probability"], unmodified or 1.0]),
    )  # fmt: skip
    return fig


def _log_axis(probabilities: Iterable[float]) -> dict:
    """A log axis from a decade below the smallest probability (at least 1e-30) up to 1."""
    smallest = max(min(probabilities), 1e-30)
    return dict(title="probability (log scale)", type="log", range=[math.floor(math.log10(smallest)) - 0.5, 0.05],
                exponentformat="power")  # fmt: skip

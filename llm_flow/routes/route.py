"""A route graph that shows itself in a notebook: `route(run, target)` wraps what `build_graph`
returns (a networkx graph, public API that stays as it is) with the Run it explains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx

from llm_flow.validation import DEFAULT_THRESHOLD
from llm_flow.display import Displayable
from llm_flow.models.run import Run
from llm_flow.routes.graph import shared_graph

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

#: Heads and FFN blocks listed in a summary.
TOP_COMPONENTS = 5


@dataclass(frozen=True, eq=False)
class Route(Displayable):
    """The information-flow route to the prediction at `target` (``graph``: the networkx graph
    `build_graph` makes, kept with the Run; do not modify it)."""

    run: Run
    graph: nx.DiGraph

    @property
    def target(self) -> int:
        return int(self.graph.graph["target"])

    def summary(self) -> dict[str, object]:
        from llm_flow.views.predictions import top_predictions
        from llm_flow.views.route_summary import ffns_frame, heads_frame, summarize_route

        best = top_predictions(self.run, self.target, k=1)[0]
        routes = summarize_route(self.graph)
        settings = self.graph.graph
        return {
            "model": self.run.model.name,
            "token": f"{self.target} {self.run.str_tokens[self.target]!r} → predicts {best.token!r} ({best.probability:.1%})",
            "threshold": f"{settings['threshold']:g} ({'renormalised' if settings['renormalize'] else 'not renormalised'})",
            "size": f"{self.graph.number_of_nodes()} nodes, {self.graph.number_of_edges()} edges",
            "top heads": heads_frame(routes).head(TOP_COMPONENTS),
            "top FFN blocks": ffns_frame(routes, self.run.str_tokens).head(TOP_COMPONENTS),
        }

    def figure(self, compact: bool = False) -> "go.Figure":
        """The route graph as the Explorer draws it; `compact` leaves out the token columns the
        route does not reach."""
        from llm_flow.figures.route import route_figure

        return route_figure(self.graph, compact=compact)

    def to_frame(self) -> "pd.DataFrame":
        """One row per edge (`llm_flow.views.route_summary.edges_frame`)."""
        from llm_flow.views.route_summary import edges_frame

        return edges_frame(self.graph)


def route(run: Run, target: int = -1, threshold: float = DEFAULT_THRESHOLD, renormalize: bool = True) -> Route:
    """The route graph of `build_graph` (same arguments), kept with the Run, as a `Route` that
    displays itself in a notebook."""
    return Route(run, shared_graph(run, target, threshold, renormalize))

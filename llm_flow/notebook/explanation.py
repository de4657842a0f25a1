"""`explain(model, prompt, token)`: the Explorer's main view in a notebook cell, in one call.

What a first look needs, without the app: the route to the prediction after `token` (the graph
the Explorer draws), the model's next-token table, and the heads and FFN blocks that carry the
most of the route. A cell that ends with the result draws it (plotly's own renderers); its
parts stay available as `route`, `predictions`, `heads` and `ffns`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cached_property

import pandas as pd
import plotly.graph_objects as go

from llm_flow.validation import DEFAULT_THRESHOLD, check_prompt_text
from llm_flow.display import Displayable
from llm_flow.errors import ArgumentError
from llm_flow.figures.explain import explain_figure
from llm_flow.models.base import TransparentLlm
from llm_flow.routes.route import Route, route
from llm_flow.views.predictions import top_predictions
from llm_flow.views.route_summary import ffns_frame, heads_frame, summarize_route

#: Rows of each table in the main view.
ROWS = 10


@dataclass(frozen=True, eq=False)
class Explanation(Displayable):
    """The Explorer's main view of one token of one prompt."""

    route: Route

    @property
    def run(self):
        return self.route.run

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """The model's most likely next tokens after the explained token."""
        top = top_predictions(self.run, self.route.target, k=ROWS)
        return pd.DataFrame([{"token": p.token, "token_id": p.token_id, "probability": p.probability, "logit": p.logit}
                             for p in top])  # fmt: skip

    @cached_property
    def heads(self) -> pd.DataFrame:
        """Every head on the route, most weight first (layer, head, weight)."""
        return heads_frame(summarize_route(self.route.graph))

    @cached_property
    def ffns(self) -> pd.DataFrame:
        """Every FFN block on the route, most weight first (layer, position, token, weight)."""
        return ffns_frame(summarize_route(self.route.graph), self.run.str_tokens)

    def summary(self) -> dict[str, object]:
        return {**self.route.summary(), "next token": self.predictions[["token", "probability"]]}

    def figure(self) -> go.Figure:
        target = self.route.target
        settings = self.route.graph.graph
        title = (
            f"<b>{html.escape(self.run.model.name)}</b> · the prediction after token {target} "
            f"{html.escape(repr(self.run.str_tokens[target]))} · threshold {settings['threshold']:g}"
        )
        return explain_figure(self.route.graph, title, self.predictions, self.heads.head(ROWS), self.ffns.head(ROWS))

    def to_frame(self) -> pd.DataFrame:
        """The route's edges (`Route.to_frame`)."""
        return self.route.to_frame()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """A cell ending with the explanation draws the main view, as plotly draws its figures."""
        return self.figure()._repr_mimebundle_(include, exclude)


def explain(
    model: TransparentLlm,
    prompt: str,
    token: int = -1,
    threshold: float = DEFAULT_THRESHOLD,
    renormalize: bool = True,
) -> Explanation:
    """The Explorer's main view for the prediction after position `token` of `prompt` (default
    the last token): run the prompt, build the route (threshold and renormalisation as in
    `build_graph`) and return an `Explanation` that draws itself in a notebook."""
    if not isinstance(model, TransparentLlm):
        raise ArgumentError(
            f"explain needs a model loaded by llm-flow (got a {type(model).__name__}): llm_flow.load_model(name)"
        )
    run = model.run(check_prompt_text(prompt))
    return Explanation(route(run, token, threshold, renormalize))

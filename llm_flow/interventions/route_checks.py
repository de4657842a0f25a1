"""Does a route carry the prediction? Route-only and route-removed passes against random parts.

* *route only*: at every ``A``/``I`` node the route reaches, keep only the parts that are route
  edges. Baseline: the same nodes keep the same number of parts of each kind, the attention
  parts chosen at random among each node's (source, head) pairs.
* *route removed*: remove the route's attention and FFN parts, keep the residual stream.
  Baseline: the same number of attention parts and of FFN parts in each layer, chosen at random
  among all of that layer's.

Why route removed keeps the route's residual edges: the route's last node ``I{L-1}_target`` (and
on short prompts every ``I`` node of a layer) keeps both its parts, the residual and the FFN;
removing both zeroes that state, so the prediction would vanish for any route by construction
and the check would say nothing about what the route's blocks carried.

Each is one forward pass (two per random draw); the unmodified outcome comes from the run.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import networkx as nx
import pandas as pd

from llm_flow.display import Displayable
from llm_flow.errors import ArgumentError
from llm_flow.interventions.forward import Outcome, ablated_logits, outcome
from llm_flow.interventions.parts import FfnMode, check_ffn_mode
from llm_flow.interventions.route import dropped_parts, edge_nodes, kept_parts, random_like, route_nodes
from llm_flow.models.run import Run
from llm_flow.validation import check_threshold
from llm_flow.routes.graph import build_graph
from llm_flow.routes.nodes import NodeId

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: progress(done, total): called after each forward pass of a long check.
Progress = Callable[[int, int], None]

THRESHOLDS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2)
MAX_DRAWS = 1000


@dataclass(frozen=True)
class RouteCheck(Displayable):
    """The target token's fate with the route alone, without it, and with random parts instead.

    In a notebook: the conditions table; ``.show()`` draws the probabilities with every random
    draw, ``.to_frame()`` lists every pass (`draws_table`)."""

    position: int  # where the prediction is made
    token_id: int  # the token whose probability is reported (default: the model's top one)
    token: str
    threshold: float
    n_route_parts: int  # attention and FFN parts of the route (what route removed removes)
    n_dropped_parts: int  # parts route-only removes
    seed: int
    unmodified: Outcome
    route_only: Outcome
    route_removed: Outcome
    random_only: tuple[Outcome, ...]  # one per draw
    random_removed: tuple[Outcome, ...]

    @property
    def only_percentile(self) -> float:
        """Share (%) of random routes of the same size that leave the token less likely than the
        route does: near 100 means the route's choice of parts is what carries the prediction."""
        return percentile(self.route_only.probability, [o.probability for o in self.random_only])

    @property
    def removed_percentile(self) -> float:
        """Share (%) of random removals of the same size that leave the token less likely than
        removing the route: near 0 means the route's parts matter more than random ones."""
        return percentile(self.route_removed.probability, [o.probability for o in self.random_removed])

    def table(self) -> pd.DataFrame:
        """One row per condition; random rows give the median over draws and the spread."""
        rows = [_row("unmodified", self.unmodified)]
        rows.append(_row("route only", self.route_only, percentile=self.only_percentile))
        rows.append(_random_row("random only (median)", self.random_only))
        rows.append(_row("route removed", self.route_removed, percentile=self.removed_percentile))
        rows.append(_random_row("random removed (median)", self.random_removed))
        return pd.DataFrame(rows)

    def draws_table(self) -> pd.DataFrame:
        """Every pass: one row per condition and draw (draw is empty for the route's own)."""
        fixed = [("unmodified", self.unmodified), ("route only", self.route_only), ("route removed", self.route_removed)]
        rows = [{"condition": c, "draw": None, **asdict(o)} for c, o in fixed]
        for condition, draws in (("random only", self.random_only), ("random removed", self.random_removed)):
            rows += [{"condition": condition, "draw": k, **asdict(o)} for k, o in enumerate(draws)]
        frame = pd.DataFrame(rows)
        frame["draw"] = frame["draw"].astype("Int64")
        return frame.assign(token=self.token, position=self.position, seed=self.seed)

    def summary(self) -> dict[str, object]:
        return {
            "prediction": f"{self.token!r} at token {self.position}",
            "route": f"threshold {self.threshold:g}: {self.n_route_parts} attention and FFN parts "
                     f"(route only removes {self.n_dropped_parts} others)",
            "random draws": f"{len(self.random_only)} of each baseline (seed {self.seed})",
            "route only beats": f"{self.only_percentile:.0f}% of random routes of its size",
            "route removed is below": f"{100 - self.removed_percentile:.0f}% of random removals of its size",
            "conditions": self.table(),
        }  # fmt: skip

    def figure(self) -> "go.Figure":
        from llm_flow.figures.route_check import route_check_figure

        return route_check_figure(self)

    def to_frame(self) -> pd.DataFrame:
        return self.draws_table()


@dataclass(frozen=True)
class EdgeRemoval:
    """The target token before and after removing one route edge."""

    source: str
    dest: str
    n_parts: int
    token_id: int
    token: str
    unmodified: Outcome
    removed: Outcome


def check_route(
    run: Run,
    graph: nx.DiGraph,
    draws: int = 20,
    seed: int = 0,
    token: int | None = None,
    ffn_mode: FfnMode = "zero",
    progress: Progress | None = None,
) -> RouteCheck:
    """Route only, route removed and `draws` random baselines of each for `graph`'s target.
    `progress(done, total)` is called after each of the 2 + 2 × draws forward passes."""
    check_ffn_mode(ffn_mode)
    if not isinstance(draws, int) or not 1 <= draws <= MAX_DRAWS:
        raise ArgumentError(f"draws must be 1..{MAX_DRAWS} (got {draws!r})")
    nodes = route_nodes(run, graph)
    position = graph.graph["target"]
    token = _token(run, position, token)
    rng = random.Random(seed)
    removed = kept_parts(run, nodes, ffn_mode, residual=False)
    only = dropped_parts(run, nodes, ffn_mode)

    passes = iter(range(1, 2 * draws + 3))

    def fate(ablation) -> Outcome:
        result = outcome(ablated_logits(run, ablation)[position], token)
        if progress is not None:
            progress(next(passes), 2 * draws + 2)
        return result

    random_only, random_removed = [], []
    for _ in range(draws):
        random_only.append(fate(dropped_parts(run, nodes, ffn_mode, rng)))
        random_removed.append(fate(random_like(run, removed, rng)))
    return RouteCheck(
        position=position,
        token_id=token,
        token=run.model.decode_tokens([token])[0],
        threshold=graph.graph["threshold"],
        n_route_parts=removed.n_parts,
        n_dropped_parts=only.n_parts,
        seed=seed,
        unmodified=outcome(run.position_logits(position), token),
        route_only=fate(only),
        route_removed=fate(removed),
        random_only=tuple(random_only),
        random_removed=tuple(random_removed),
    )


def check_edge(
    run: Run, graph: nx.DiGraph, source: str, dest: str, token: int | None = None, ffn_mode: FfnMode = "zero"
) -> EdgeRemoval:
    """Remove one route edge's parts (an edge into an FFN node: the FFN itself) and re-run."""
    check_ffn_mode(ffn_mode)
    nodes = edge_nodes(run, graph, source, dest)
    position = graph.graph["target"]
    token = _token(run, position, token)
    if not nodes:  # A -> M (input -> M for parallel blocks) carries the flow of M -> I
        ffn = NodeId.parse(dest)
        nodes = edge_nodes(run, graph, dest, str(NodeId("I", ffn.layer, ffn.position)))
    removal = kept_parts(run, nodes, ffn_mode)
    return EdgeRemoval(
        source=source,
        dest=dest,
        n_parts=removal.n_parts,
        token_id=token,
        token=run.model.decode_tokens([token])[0],
        unmodified=outcome(run.position_logits(position), token),
        removed=outcome(ablated_logits(run, removal)[position], token),
    )


def threshold_curve(
    run: Run,
    graph: nx.DiGraph,
    thresholds: Sequence[float] = THRESHOLDS,
    token: int | None = None,
    ffn_mode: FfnMode = "zero",
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Route-only outcome as the threshold varies (target and renormalisation from `graph`):
    how small can the route be and still carry the prediction. One forward pass per threshold,
    each followed by `progress(done, total)`."""
    check_ffn_mode(ffn_mode)
    route_nodes(run, graph)  # the graph must belong to the run
    position, renormalize = graph.graph["target"], graph.graph["renormalize"]
    token = _token(run, position, token)
    rows = []
    ordered = sorted(check_threshold(t) for t in thresholds)
    for done, threshold in enumerate(ordered, 1):
        route = build_graph(run, position, threshold, renormalize)
        nodes = route_nodes(run, route)
        fate = outcome(ablated_logits(run, dropped_parts(run, nodes, ffn_mode))[position], token)
        rows.append({
            "threshold": threshold,
            "nodes": route.number_of_nodes(),
            "edges": route.number_of_edges(),
            "parts": kept_parts(run, nodes, ffn_mode, residual=False).n_parts,
            "probability": fate.probability,
            "logit": fate.logit,
            "rank": fate.rank,
        })  # fmt: skip
        if progress is not None:
            progress(done, len(ordered))
    return pd.DataFrame(rows)


def percentile(value: float, draws: Sequence[float]) -> float:
    """Share (%) of `draws` below `value`, ties counted half."""
    below = sum(d < value for d in draws) + 0.5 * sum(d == value for d in draws)
    return 100.0 * below / len(draws)


def _token(run: Run, position: int, token: int | None) -> int:
    if token is None:
        return int(run.position_logits(position).argmax())
    vocab = run.model.info.vocab_size
    if not isinstance(token, int) or not 0 <= token < vocab:
        raise ArgumentError(f"token must be a token id 0..{vocab - 1} (got {token!r})")
    return token


def _row(condition: str, fate: Outcome, percentile: float = math.nan) -> dict:
    return {"condition": condition, "probability": fate.probability, "logit": fate.logit, "rank": fate.rank,
            "percentile": percentile, "low": math.nan, "high": math.nan}  # fmt: skip


def _random_row(condition: str, draws: tuple[Outcome, ...]) -> dict:
    """Medians over the draws, with the lowest and highest probability seen."""
    probs = [o.probability for o in draws]
    return {"condition": condition, "probability": statistics.median(probs),
            "logit": statistics.median(o.logit for o in draws), "rank": statistics.median(o.rank for o in draws),
            "percentile": math.nan, "low": min(probs), "high": max(probs)}  # fmt: skip

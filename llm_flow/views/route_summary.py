"""Which heads, FFN blocks and layers carry the most of a route: a summary of a route graph."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True)
class RouteSummary:
    heads: list[tuple[int, int, float]]  # (layer, head, summed weight over kept attention edges)
    ffns: list[tuple[int, int, float]]  # (layer, position, weight of the FFN edge into the residual)
    layer_nodes: dict[int, int]  # layer -> number of kept nodes in it (embeddings are layer -1)
    input_positions: list[int]  # token positions whose embeddings the route reaches


def summarize_route(graph: nx.DiGraph) -> RouteSummary:
    """Aggregate a route graph built by :func:`llm_flow.build_graph`."""
    heads: dict[tuple[int, int], float] = defaultdict(float)
    ffns: list[tuple[int, int, float]] = []
    for _, dest, data in graph.edges(data=True):
        node = graph.nodes[dest]
        if data["kind"] == "attention":
            for head, weight in enumerate(data["heads"]):
                heads[(node["layer"], head)] += weight
        elif data["kind"] == "ffn" and node["kind"] == "resid_post":
            ffns.append((node["layer"], node["position"], data["weight"]))
    layer_nodes: dict[int, int] = defaultdict(int)
    for _, node in graph.nodes(data=True):
        layer_nodes[node["layer"]] += 1
    inputs = sorted(n["position"] for _, n in graph.nodes(data=True) if n["kind"] == "embedding")
    return RouteSummary(
        heads=sorted(((l, h, w) for (l, h), w in heads.items()), key=lambda t: -t[2]),
        ffns=sorted(ffns, key=lambda t: -t[2]),
        layer_nodes=dict(sorted(layer_nodes.items())),
        input_positions=inputs,
    )

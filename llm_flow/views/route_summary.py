"""Which heads, FFN blocks and layers carry the most of a route: a summary of a route graph."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx
import pandas as pd


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
        if data["kind"] in ("attention", "cross"):
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


def stack_summaries(graph: nx.DiGraph) -> dict[str, RouteSummary]:
    """An encoder–decoder's route (:func:`llm_flow.seq2seq_route`) summarised apart for the
    "encoder" and "decoder" stacks (their self-attention heads, FFN blocks, nodes and embeddings)
    and the "cross" edges between them (the cross-attention heads)."""
    summaries = {
        stack: summarize_route(graph.subgraph(n for n, d in graph.nodes(data=True) if d["stack"] == stack))
        for stack in ("encoder", "decoder")
    }
    summaries["cross"] = summarize_route(graph.edge_subgraph((u, v) for u, v, d in graph.edges(data=True) if d["kind"] == "cross"))
    return summaries


def heads_frame(summary: RouteSummary) -> pd.DataFrame:
    """The route's heads, most weight first: layer, head, weight summed over its kept edges."""
    return pd.DataFrame(summary.heads, columns=["layer", "head", "weight"])


def ffns_frame(summary: RouteSummary, tokens: list[str]) -> pd.DataFrame:
    """The route's FFN blocks, most weight first: layer, position, its token, the FFN edge's weight."""
    frame = pd.DataFrame(summary.ffns, columns=["layer", "position", "weight"])
    frame.insert(2, "token", [tokens[p] for p in frame["position"]])
    return frame


def edges_frame(graph: nx.DiGraph) -> pd.DataFrame:
    """One row per route edge: source and destination nodes, kind, weight and, for attention
    (and an encoder–decoder's cross-attention) edges, the per-head split (one column per head)
    and the residual's share."""
    rows = []
    for source, dest, data in graph.edges(data=True):
        row = {"source": source, "dest": dest, "kind": data["kind"], "weight": data["weight"],
               "layer": graph.nodes[dest]["layer"], "position": graph.nodes[dest]["position"]}  # fmt: skip
        if data["kind"] in ("attention", "cross"):
            row["residual"] = data.get("residual", 0.0)
            row.update({f"head_{h}": float(w) for h, w in enumerate(data["heads"])})
        rows.append(row)
    return pd.DataFrame(rows)

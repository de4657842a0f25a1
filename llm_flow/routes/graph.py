"""Information-flow route graphs: thresholded contributions, pruned top-down from a target.

Nodes, per layer ``l`` and position ``i``:

* ``X_i``     the embedding of token i (kind ``embedding``, layer -1: before layer 0)
* ``A{l}_i``  the residual after attention, ``resid_mid`` (kind ``resid_mid``; sequential blocks)
* ``M{l}_i``  the FFN block (kind ``ffn``)
* ``I{l}_i``  the residual after the layer, ``resid_post`` (kind ``resid_post``)

Edges point the way information flows and carry ``weight``, the contribution of the source node
to the destination's representation. An edge into ``A{l}_i`` from the layer input at position j
sums the heads (``heads`` keeps the per-head split, ``residual`` the residual stream's share,
non-zero only for j == i where the residual and the self-attention share one edge). ``A -> I`` is
the residual (kind ``residual``), ``M -> I`` the FFN (kind ``ffn``), and ``A -> M`` carries the
same weight as ``M -> I``: the flow that went through the FFN. Parallel blocks (GPT-NeoX) have no
``A`` nodes: the layer input feeds ``I{l}_i`` and ``M{l}_i`` directly, normalised jointly.

Threshold: the edges into one node are that node's parts; those with weight <= t are dropped and,
with renormalisation, the survivors are rescaled to sum to 1 (heads and residual scale with
their edge). Pruning starts at ``I{L-1}_target`` and keeps, walking top-down, every incoming edge
above t of a node already kept; nothing unreachable from the target is ever computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import networkx as nx
import torch

from llm_flow.validation import check_threshold
from llm_flow.models.run import Run
from llm_flow.routes.contributions import RowContributions, contribution_rows, ffn_contributions
from llm_flow.routes.nodes import EMBEDDING_LAYER, KINDS, NodeId


class ContributionSource(Protocol):
    """What the pruner reads: a Run, or (in tests) a hand-built table."""

    n_layers: int
    parallel: bool
    str_tokens: list[str]

    def attention_rows(self, layer: int, positions: list[int]) -> list[RowContributions]: ...

    def ffn(self, layer: int, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequential blocks: (c_ffn [r], c_res [r]) of resid_post at `positions`."""
        ...


class RunContributions:
    """A Run's contributions, computed lazily and remembered by the Run."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.n_layers, self.parallel, self.str_tokens = run.n_layers, run.parallel, run.str_tokens

    def attention_rows(self, layer: int, positions: list[int]) -> list[RowContributions]:
        return contribution_rows(self.run, layer, positions)

    def ffn(self, layer: int, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return ffn_contributions(self.run, layer, positions)


def build_graph(
    run: Run, target: int = -1, threshold: float = 0.04, renormalize: bool = True
) -> nx.DiGraph:
    """The route graph that explains the prediction at token position `target`."""
    target = run.position(target)
    return route_graph(
        RunContributions(run), target, threshold, renormalize, model=run.model.name, prompt=run.prompt
    )


@dataclass(frozen=True)
class RouteOf:
    """Key of a route graph in a Run's derived store: the settings `build_graph` took."""

    target: int  # non-negative position
    threshold: float
    renormalize: bool


def shared_graph(run: Run, target: int = -1, threshold: float = 0.04, renormalize: bool = True) -> nx.DiGraph:
    """`build_graph`, kept with the Run: for pages that show the same route on every rerun and
    to every session. Shared, so never modify it (build your own with `build_graph` for that)."""
    target = run.position(target)
    return run.derived(RouteOf(target, threshold, renormalize), partial(build_graph, run, target, threshold, renormalize))


def route_graph(
    source: ContributionSource, target: int, threshold: float, renormalize: bool, **graph_attrs
) -> nx.DiGraph:
    """Walk top-down from ``I{L-1}_target``; `target` is a non-negative position."""
    threshold = check_threshold(threshold)
    graph = nx.DiGraph(
        tokens=list(source.str_tokens),
        target=target,
        threshold=threshold,
        renormalize=renormalize,
        n_layers=source.n_layers,
        n_tokens=len(source.str_tokens),
        parallel=source.parallel,
        **graph_attrs,
    )
    _add_node(graph, source, NodeId("I", source.n_layers - 1, target))
    frontier = [target]
    walk = _parallel_layer if source.parallel else _sequential_layer
    for layer in reversed(range(source.n_layers)):
        if not frontier:
            break
        frontier = walk(graph, source, layer, frontier, threshold, renormalize)
    return graph


def apply_threshold(weights: torch.Tensor, threshold: float, renormalize: bool) -> torch.Tensor:
    """Zero the parts <= threshold along the last axis; optionally rescale survivors to sum 1."""
    kept = torch.where(weights > threshold, weights, torch.zeros_like(weights))
    if renormalize:
        total = kept.sum(-1, keepdim=True)
        kept = torch.where(total > 0, kept / torch.where(total > 0, total, 1.0), kept)
    return kept


def _sequential_layer(graph, source: ContributionSource, layer, positions, threshold, renormalize, stack=None) -> list[int]:
    """Edges into the kept ``I{layer}_i``, then into the ``A{layer}_i`` those reach (`stack`: the
    encoder–decoder stack the nodes belong to, None in a decoder-only or encoder graph)."""
    c_ffn, c_res = source.ffn(layer, positions)
    weights = apply_threshold(torch.stack([c_res, c_ffn], -1), threshold, renormalize)
    attention_positions = []
    for k, position in enumerate(positions):
        after_layer, after_attention, ffn_node = (NodeId(kind, layer, position, stack) for kind in "IAM")
        residual, ffn = float(weights[k, 0]), float(weights[k, 1])
        if residual > threshold:
            _add_edge(graph, source, after_attention, after_layer, residual, "residual")
        if ffn > threshold:
            _add_edge(graph, source, ffn_node, after_layer, ffn, "ffn")
            _add_edge(graph, source, after_attention, ffn_node, ffn, "ffn")
        if residual > threshold or ffn > threshold:
            attention_positions.append(position)
    sources: set[int] = set()
    for row in source.attention_rows(layer, attention_positions):
        kept = _attention_edges(graph, source, layer, row, "A", threshold, renormalize, ffn_weight=None, stack=stack)
        sources.update(kept)
    return sorted(sources)


def _parallel_layer(graph, source: ContributionSource, layer, positions, threshold, renormalize) -> list[int]:
    """Edges into the kept ``I{layer}_i``: attention, residual and FFN normalised together."""
    sources: set[int] = set()
    for row in source.attention_rows(layer, positions):
        kept = _attention_edges(graph, source, layer, row, "I", threshold, renormalize, ffn_weight=row.ffn)
        sources.update(kept)
    return sorted(sources)


def _attention_edges(graph, source, layer, row, to_kind, threshold, renormalize, ffn_weight, stack=None) -> list[int]:
    """Add the kept edges into the `to_kind` node of `layer` from the layer input; return the kept
    source positions."""
    position = row.position
    edge = row.heads.sum(1)  # [sources]: j <= i in a decoder, every j in an encoder
    edge[position] += row.residual
    parts = edge if ffn_weight is None else torch.cat([edge, torch.tensor([ffn_weight])])
    kept = apply_threshold(parts, threshold, renormalize)
    scale = kept / torch.where(parts > 0, parts, 1.0)  # per-edge factor, for the per-head split
    to_node = NodeId(to_kind, layer, position, stack)
    sources = torch.nonzero(kept[: len(edge)] > threshold).flatten().tolist()
    for j in sources:
        _add_edge(
            graph,
            source,
            _input_node(layer, j, stack),
            to_node,
            float(kept[j]),
            "attention",
            heads=(row.heads[j] * scale[j]).tolist(),
            residual=float(row.residual * scale[j]) if j == position else 0.0,
        )
    if ffn_weight is not None and float(kept[-1]) > threshold:
        ffn_node = NodeId("M", layer, position)
        _add_edge(graph, source, ffn_node, to_node, float(kept[-1]), "ffn")
        _add_edge(graph, source, _input_node(layer, position), ffn_node, float(kept[-1]), "ffn")
        sources = sorted(set(sources) | {position})
    return sources


def _input_node(layer: int, position: int, stack: str | None = None) -> NodeId:
    return NodeId("X", EMBEDDING_LAYER, position, stack) if layer == 0 else NodeId("I", layer - 1, position, stack)


def _add_edge(graph, source: ContributionSource, start: NodeId, end: NodeId, weight: float, kind: str, **attrs) -> None:
    """Add an edge between two nodes, creating them as needed."""
    graph.add_edge(_add_node(graph, source, start), _add_node(graph, source, end), weight=weight, kind=kind, **attrs)


def _add_node(graph: nx.DiGraph, source: ContributionSource, node: NodeId) -> str:
    name = str(node)
    if name not in graph:
        graph.add_node(
            name, kind=KINDS[node.kind].attribute, layer=node.layer, position=node.position,
            token=source.str_tokens[node.position],
        )  # fmt: skip
        if node.stack is not None:  # an encoder–decoder's node; decoder-only nodes stay as they were
            graph.nodes[name]["stack"] = node.stack
    return name


def graph_json(graph: nx.DiGraph) -> str:
    """The graph as node-link JSON; ``networkx.node_link_graph(json.loads(text), edges="edges")``
    reads it back."""
    return json.dumps(nx.node_link_data(graph, edges="edges"), indent=1)

"""From a route graph to sets of parts: the route's own, its complement, and random look-alikes.

A graph edge is a set of parts of the node it enters (DESIGN.md §1, `llm_flow.routes.graph`):

* attention edge ``j -> A{l}_i`` (``-> I{l}_i`` for parallel blocks): ``z[i, j, h]`` for every
  head h, plus the residual part of that node when j == i (the graph merges the two);
* residual edge ``A{l}_i -> I{l}_i``: the residual part of ``I{l}_i``;
* FFN edge ``M{l}_i -> I{l}_i``: the FFN part of ``I{l}_i`` (the edge into ``M{l}_i`` carries the
  same flow and is not a part of its own).

The nodes with parts are ``A`` and ``I``; every such node in a route graph had its incoming
edges thresholded, so its kept parts are exactly its route edges.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import networkx as nx
import torch

from llm_flow.errors import ArgumentError
from llm_flow.interventions.parts import Ablation, FfnMode, LayerRemoval, check_run, n_heads, n_sources
from llm_flow.models.run import Run
from llm_flow.routes.nodes import NodeId


@dataclass
class NodeParts:
    """The parts of one ``A`` or ``I`` node that a route keeps."""

    layer: int
    position: int
    node: str  # "A" or "I"
    attention: bool  # does this node have attention parts (A, or I of a parallel block)
    n_sources: int  # tokens its attention reads: position + 1 in a decoder, all in an encoder
    sources: set[int] = field(default_factory=set)  # attention edges kept (all heads)
    residual: bool = False
    ffn: bool = False


@dataclass
class _Removal:
    """A layer's removal being assembled."""

    attention: list[torch.Tensor] = field(default_factory=list)  # [n, 3] blocks (i, j, h)
    residual_attention: set[int] = field(default_factory=set)
    residual_ffn: set[int] = field(default_factory=set)
    ffn: set[int] = field(default_factory=set)

    def residual(self, node: NodeParts, parallel: bool) -> set[int]:
        return self.residual_attention if node.node == "A" or parallel else self.residual_ffn

    def freeze(self) -> LayerRemoval:
        rows = torch.cat(self.attention) if self.attention else torch.zeros(0, 3, dtype=torch.long)
        return LayerRemoval(rows, frozenset(self.residual_attention), frozenset(self.residual_ffn), frozenset(self.ffn))


def check_graph(run: Run, graph: nx.DiGraph) -> None:
    """A route graph must come from this run's prompt and model."""
    check_run(run)
    attrs = graph.graph
    if "target" not in attrs or "n_layers" not in attrs:
        raise ArgumentError("this is not a route graph: build one with llm_flow.build_graph(run, ...)")
    same_model = attrs.get("model", run.model.name) == run.model.name
    if not same_model or attrs["n_layers"] != run.n_layers or list(attrs.get("tokens", [])) != run.str_tokens:
        raise ArgumentError(
            "this route graph was built for another prompt or model: build it from the same run "
            "(llm_flow.build_graph(run, ...))"
        )


def route_nodes(run: Run, graph: nx.DiGraph) -> list[NodeParts]:
    """Every ``A``/``I`` node of the route with the parts its incoming edges carry."""
    check_graph(run, graph)
    nodes = {name: _node(run, name) for name in graph.nodes if NodeId.parse(name).kind in ("A", "I")}
    for source, dest, data in graph.edges(data=True):
        if dest not in nodes:  # edges into M carry the same flow as M -> I
            continue
        _add_edge(nodes[dest], graph.nodes[source], data["kind"])
    return sorted(nodes.values(), key=lambda n: (n.layer, n.position, n.node))


def edge_nodes(run: Run, graph: nx.DiGraph, source: str, dest: str) -> list[NodeParts]:
    """The parts of one edge, as a one-node list (empty for an edge into an FFN node)."""
    check_graph(run, graph)
    if not graph.has_edge(source, dest):
        raise ArgumentError(f"the route has no edge {source} -> {dest}")
    if NodeId.parse(dest).kind == "M":
        return []
    node = _node(run, dest)
    _add_edge(node, graph.nodes[source], graph.edges[source, dest]["kind"])
    return [node]


def _node(run: Run, name: str) -> NodeParts:
    node = NodeId.parse(name)
    return NodeParts(
        node.layer, node.position, node.kind, attention=node.kind == "A" or run.parallel,
        n_sources=n_sources(run, node.position),
    )  # fmt: skip


def _add_edge(node: NodeParts, source: dict, kind: str) -> None:
    if kind == "attention":
        node.sources.add(source["position"])
        node.residual |= source["position"] == node.position
    elif kind == "residual":
        node.residual = True
    elif kind == "ffn":
        node.ffn = True


def kept_parts(run: Run, nodes: list[NodeParts], ffn_mode: FfnMode, residual: bool = True) -> Ablation:
    """Remove exactly the parts the nodes keep (one edge removed); without their residual parts
    (`residual=False`, route removed) only what attention and the FFNs added."""
    heads = n_heads(run)
    layers: dict[int, _Removal] = {}
    for node in nodes:
        removal = layers.setdefault(node.layer, _Removal())
        if node.sources:
            removal.attention.append(_rows(node.position, torch.tensor(sorted(node.sources)), heads))
        if node.residual and residual:
            removal.residual(node, run.parallel).add(node.position)
        if node.ffn:
            removal.ffn.add(node.position)
    return Ablation(run.n_tokens, {layer: r.freeze() for layer, r in sorted(layers.items())}, ffn_mode)


def dropped_parts(run: Run, nodes: list[NodeParts], ffn_mode: FfnMode, rng: random.Random | None = None) -> Ablation:
    """At every node, remove the parts the route does not keep (route only).

    With `rng`, each node instead keeps as many attention parts as the route keeps there, chosen
    at random among its (source, head) pairs; residual and FFN parts are kept as the route keeps
    them, so the random route has the same nodes and the same number of parts of each kind.
    """
    heads = n_heads(run)
    layers: dict[int, _Removal] = {}
    for node in nodes:
        removal = layers.setdefault(node.layer, _Removal())
        if node.attention:
            removal.attention.append(_dropped_heads(node, heads, rng))
        if not node.residual:
            removal.residual(node, run.parallel).add(node.position)
        if node.node == "I" and not node.ffn:
            removal.ffn.add(node.position)
    return Ablation(run.n_tokens, {layer: r.freeze() for layer, r in sorted(layers.items())}, ffn_mode)


def random_like(run: Run, route: Ablation, rng: random.Random) -> Ablation:
    """As many parts as `route` removes in each layer and of each kind, chosen uniformly among
    all parts of that layer and kind (route removed's baseline): every (query, source, head) the
    layer's attention has, the causal triangle in a decoder, all T × T pairs in an encoder."""
    heads, n_tokens = n_heads(run), run.n_tokens
    counts = run.layer(0).pattern.source_counts(torch.arange(n_tokens))  # [T] sources per query row
    n_pairs = int(counts.sum())
    layers = {}
    for layer, removal in route.layers.items():
        flat = torch.tensor(rng.sample(range(n_pairs * heads), len(removal.attention)), dtype=torch.long)
        query, source = _pair(counts, flat // heads)
        rows = torch.stack([query, source, flat % heads], 1)
        layers[layer] = LayerRemoval(
            rows,
            *(frozenset(rng.sample(range(n_tokens), len(s))) for s in (removal.residual_attention, removal.residual_ffn, removal.ffn)),
        )
    return Ablation(n_tokens, layers, route.ffn_mode)


def _dropped_heads(node: NodeParts, heads: int, rng: random.Random | None) -> torch.Tensor:
    """Attention rows (i, j, h) of `node` outside what it keeps: [n, 3]."""
    n_parts = node.n_sources * heads  # flat index j * heads + h
    keep = torch.zeros(n_parts, dtype=torch.bool)
    if rng is None:
        sources = torch.tensor(sorted(node.sources), dtype=torch.long)
        keep.view(-1, heads)[sources] = True
    else:
        keep[rng.sample(range(n_parts), len(node.sources) * heads)] = True
    flat = torch.nonzero(~keep).flatten()
    return torch.stack([torch.full_like(flat, node.position), flat // heads, flat % heads], 1)


def _rows(query: int, sources: torch.Tensor, heads: int) -> torch.Tensor:
    """(query, j, h) for every j in `sources` and every head: [len(sources) * heads, 3]."""
    j = sources.repeat_interleave(heads)
    h = torch.arange(heads).repeat(len(sources))
    return torch.stack([torch.full_like(j, query), j, h], 1)


def _pair(counts: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair number -> (query i, source j), pairs ordered row by row, row i holding `counts[i]`
    sources 0..counts[i] - 1 (counts [T] int64; index [n] int64, exact in integers)."""
    ends = torch.cumsum(counts, 0)  # [T] first pair number after each row
    query = torch.searchsorted(ends, index, right=True)
    return query, index - (ends[query] - counts[query])

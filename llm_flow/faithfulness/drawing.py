"""A circuit of any scorer as a route graph, so the Explorer draws EAP-IG's edges exactly as it
draws ALTI's: the same nodes, edge kinds and figure, and the same top-down reading from the
explained token's last state (edges that reach it through no kept path are left out, as the
route pruner leaves them out)."""

from __future__ import annotations

import networkx as nx
import torch

from llm_flow.faithfulness.edges import ATTENTION, FFN, KIND_NAMES
from llm_flow.faithfulness.problem import Problem
from llm_flow.routes.nodes import EMBEDDING_LAYER, KINDS, NodeId


def circuit_graph(problem: Problem, kept: torch.Tensor, scores: torch.Tensor, scorer: str) -> nx.DiGraph:
    """The edges `kept` (a bool mask over `problem.edges`) as a route graph for `route_figure`.
    Edge weights are |score| / the largest |score| kept (the figure's thickness), `score` keeps
    the signed value; attention edges carry no per-head split (a scorer scores the whole edge)."""
    edges, run = problem.edges, problem.run
    kept = edges.check_mask(kept)
    position = problem.contrast.position
    top = float(scores[kept].abs().max()) if bool(kept.any()) else 1.0
    by_dest: dict[str, list[tuple[str, int]]] = {}
    for index in torch.nonzero(kept).flatten().tolist():
        source, dest = edges.names(index)
        by_dest.setdefault(dest, []).append((source, index))
    graph = nx.DiGraph(
        tokens=list(run.str_tokens), target=position, threshold=0.0, renormalize=False, n_layers=run.n_layers,
        n_tokens=run.n_tokens, parallel=run.parallel, model=run.model.name, prompt=run.prompt, scorer=scorer,
    )  # fmt: skip
    start = str(NodeId("I", run.n_layers - 1, position))
    _node(graph, run, start)
    frontier, seen = [start], {start}
    while frontier:
        dest = frontier.pop()
        for source, index in by_dest.get(dest, []):
            kind = KIND_NAMES[int(edges.kind[index])]
            weight = min(float(scores[index].abs()) / top, 1.0) if top > 0 else 0.0
            extra = {"heads": [], "residual": 0.0} if int(edges.kind[index]) == ATTENTION else {}
            _edge(graph, run, source, dest, weight, kind, float(scores[index]), **extra)
            if int(edges.kind[index]) == FFN:  # the FFN's own input edge, drawn as the pruner draws it
                ffn = NodeId.parse(source)
                layer_input = NodeId("I", ffn.layer - 1, ffn.position) if ffn.layer > 0 else NodeId("X", EMBEDDING_LAYER, ffn.position)
                into = layer_input if run.parallel else NodeId("A", ffn.layer, ffn.position)
                _edge(graph, run, str(into), source, weight, kind, float(scores[index]))
                source = str(into)
            if source not in seen:
                seen.add(source)
                frontier.append(source)
    return graph


def _node(graph: nx.DiGraph, run, name: str) -> None:
    if name not in graph:
        node = NodeId.parse(name)
        graph.add_node(name, kind=KINDS[node.kind].attribute, layer=node.layer, position=node.position,
                       token=run.str_tokens[node.position])  # fmt: skip


def _edge(graph: nx.DiGraph, run, source: str, dest: str, weight: float, kind: str, score: float, **attrs) -> None:
    _node(graph, run, source)
    _node(graph, run, dest)
    graph.add_edge(source, dest, weight=weight, kind=kind, score=score, **attrs)

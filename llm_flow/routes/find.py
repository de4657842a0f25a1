"""Finding nodes in a large route graph from what a person types under it.

A query is one of (tried in this order):

* a node name as the panels write it: ``A12_4``, ``M3_0``, ``I29_7``, ``X_2`` (any case);
* a layer: ``L12``, or ``emb`` for the token embeddings;
* a token position: ``7``, ``-1`` (counted from the end), or a compact column label ``7:·Paris``;
* token text: ``Paris``, `` Paris`` or ``·Paris`` (the figure's dot stands for a space); tokens
  that read exactly so (ignoring case and surrounding spaces) come before tokens that only
  contain it. Quotes (``"12"``, ``'L3'``) make any query token text.

Nodes come back in the order a reader meets them in the figure: left to right over tokens, and
within a token bottom to top (embedding, then per layer attention, FFN, residual after the layer).
A query that is well formed but names nothing on this route gives no nodes and a message saying
why; a malformed or out-of-range one is an :class:`~llm_flow.errors.ArgumentError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import networkx as nx

from llm_flow.errors import ArgumentError
from llm_flow.routes.nodes import KINDS, NodeId
from llm_flow.wording import plural, sentence

_LEVEL = {"X": 0, "A": 1, "M": 2, "I": 3}  # bottom to top within a layer
_LAYER = re.compile(r"[Ll](\d+)")
_POSITION = re.compile(r"(-?\d+)(?::.*)?", re.DOTALL)
_EMBEDDING = ("emb", "embedding", "embeddings")
_QUOTES = ('"', "'")


@dataclass(frozen=True)
class NodeSearch:
    """What a query found: node names, best first, and a sentence saying what they are (or why
    there are none)."""

    query: str
    nodes: tuple[str, ...]
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", sentence(self.message))


def find_nodes(graph: nx.DiGraph, query: str) -> NodeSearch:
    """The nodes of `graph` (from :func:`llm_flow.build_graph`) that `query` names; see the module
    docstring for the forms a query takes."""
    if graph.graph.get("encoder_decoder"):  # positions and layers would be ambiguous across the two stacks
        raise ArgumentError("finding nodes works on decoder-only and encoder routes so far, not across an "
                            "encoder–decoder's two stacks; click the node in the figure instead")
    text = str(query).strip()
    if not text:
        raise ArgumentError("type a token, a position (7), a layer (L3) or a node name (A3_5) to find")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        return _by_text(graph, query, text[1:-1])
    node = _node_name(text)
    if node is not None:
        return _by_name(graph, query, node)
    if text.lower() in _EMBEDDING:
        return _by_layer(graph, query, -1)
    if _LAYER.fullmatch(text):
        return _by_layer(graph, query, int(text[1:]))
    if _POSITION.fullmatch(text):
        return _by_position(graph, query, int(_POSITION.fullmatch(text).group(1)))
    return _by_text(graph, query, text)


def _node_name(text: str) -> NodeId | None:
    """A node name in any case (``a12_4``), or None when `text` is not one."""
    name = text[:1].upper() + text[1:]
    if name[:1] not in KINDS or "_" not in name:
        return None
    try:
        return NodeId.parse(name)
    except ArgumentError:
        return None


def _by_name(graph: nx.DiGraph, query: str, node: NodeId) -> NodeSearch:
    _check_layer(graph, node.layer)
    _check_position(graph, node.position)
    name = str(node)
    if name in graph:
        where = "" if node.kind == "X" else f" (layer {node.layer})"
        return NodeSearch(query, (name,), f"{name}: {node.spec.label}{where} at {_token(graph, node.position)}")
    return NodeSearch(query, (), f"{name} is not on this route{_reach(graph)}")


def _by_layer(graph: nx.DiGraph, query: str, layer: int) -> NodeSearch:
    what = "the token embeddings" if layer < 0 else f"layer {layer}"
    _check_layer(graph, layer)
    nodes = _ordered(n for n, data in graph.nodes(data=True) if data["layer"] == layer)
    if not nodes:
        return NodeSearch(query, (), f"no node of {what} is on this route{_reach(graph)}")
    tokens = {graph.nodes[n]["position"] for n in nodes}
    return NodeSearch(query, nodes, f"{what}: {plural(len(nodes), 'node')} at {plural(len(tokens), 'token')}")


def _by_position(graph: nx.DiGraph, query: str, position: int) -> NodeSearch:
    n_tokens = graph.graph["n_tokens"]
    _check_position(graph, position)
    position = position % n_tokens
    nodes = _ordered(n for n, data in graph.nodes(data=True) if data["position"] == position)
    if not nodes:
        return NodeSearch(query, (), f"{_token(graph, position)} is not reached by this route{_reach(graph)}")
    return NodeSearch(query, nodes, f"{_token(graph, position)}: {plural(len(nodes), 'node')}")


def _by_text(graph: nx.DiGraph, query: str, text: str) -> NodeSearch:
    wanted = _folded(text)
    if not wanted:
        raise ArgumentError("type some text of a token to find it (quotes alone match nothing)")
    tokens = [_folded(token) for token in graph.graph["tokens"]]
    exact = [p for p, token in enumerate(tokens) if token == wanted]
    partial = [p for p, token in enumerate(tokens) if wanted in token and token != wanted]
    if wanted.isspace():  # "·" or "↵": tokens of spacing alone, not every token with a space inside
        partial = [p for p in partial if tokens[p].isspace()]
    if not exact and not partial:
        return NodeSearch(query, (), f"no token of the prompt reads {text!r}")
    reached = {data["position"] for _, data in graph.nodes(data=True)}
    positions = [p for p in exact + partial if p in reached]
    if not positions:
        shown = ", ".join(_token(graph, p) for p in (exact + partial)[:5])
        return NodeSearch(query, (), f"{text!r} is {shown}, not reached by this route{_reach(graph)}")
    nodes = tuple(n for p in positions for n in _ordered(m for m, d in graph.nodes(data=True) if d["position"] == p))
    where = _token(graph, positions[0]) if len(positions) == 1 else f"{len(positions)} tokens"
    return NodeSearch(query, nodes, f"{text!r}: {plural(len(nodes), 'node')} at {where}")


def _ordered(names) -> tuple[str, ...]:
    """Left to right, then bottom to top."""
    nodes = sorted((NodeId.parse(name) for name in names), key=lambda n: (n.position, n.layer, _LEVEL[n.kind]))
    return tuple(map(str, nodes))


def _folded(text: str) -> str:
    """Token text as compared: the figure's visible-space dot is a space and its ↵ a line break;
    case and the spaces around the text do not count, unless spaces are all it is (a search for
    "·"). Line breaks count: a token that is one (code, poems) is found by typing ↵."""
    shown = text.replace("·", " ").replace("↵", "\n").casefold()
    return shown.strip(" ") or shown


def _token(graph: nx.DiGraph, position: int) -> str:
    return f"token {position} {graph.graph['tokens'][position]!r}"


def _reach(graph: nx.DiGraph) -> str:
    """What the route does reach, as a hint after a miss."""
    layers = sorted({data["layer"] for _, data in graph.nodes(data=True) if data["layer"] >= 0})
    positions = sorted({data["position"] for _, data in graph.nodes(data=True)})
    shown = ", ".join(map(str, positions[:12])) + (", …" if len(positions) > 12 else "")
    return (
        f" at threshold {graph.graph['threshold']:g} (it reaches layers {layers[0]}–{layers[-1]} and "
        f"tokens {shown}; a lower threshold keeps more)"
    )


def _check_layer(graph: nx.DiGraph, layer: int) -> None:
    n_layers = graph.graph["n_layers"]
    if layer >= n_layers:
        raise ArgumentError(
            f"layer {layer} is out of range: the model has {plural(n_layers, 'layer')} (L0–L{n_layers - 1})"
        )


def _check_position(graph: nx.DiGraph, position: int) -> None:
    n_tokens = graph.graph["n_tokens"]
    if not -n_tokens <= position < n_tokens:
        raise ArgumentError(
            f"token {position} is out of range: the prompt has {plural(n_tokens, 'token')} "
            f"(0 to {n_tokens - 1}, or -1 for the last)"
        )

"""From route graphs to per-component statistics.

Components: every attention head ``(layer, head)``, every FFN block ``(layer)`` and the residual
stream of every layer ``(layer)``. Their *parts* in a route graph:

* a head: its share ``heads[h]`` of every kept attention edge into layer ``l`` (the ALTI part
  ``c[i, j, h]`` after thresholding and renormalisation);
* an FFN block: the weight of every kept ``M{l}_i -> I{l}_i`` edge (the ``A -> M`` edge carries
  the same flow and is not counted twice);
* the residual: the ``residual`` share of the kept self-edges into layer ``l`` (``resid_pre``'s
  part of ``resid_mid``, or of ``resid_post`` for parallel blocks) and the weight of every kept
  ``A{l}_i -> I{l}_i`` edge.

A component's **contribution** to a graph is the sum of its parts; it is **on the route** when
at least one part exceeds the threshold (the rule the pruner applies to edges).

**Position classes**, relative to the graph's target position ``t``, of the position ``p`` a
part *reads from* (an attention edge ``j -> i`` reads from ``j``; FFN and residual parts act at
their own position): ``target`` (p = t), ``first`` (p = 0, the BOS token when the model adds
one, p != t), ``previous`` (p = t - 1, p != 0) and ``other``. The class ``all`` covers every part.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx

from llm_flow.errors import ArgumentError

POSITION_CLASSES = ("all", "target", "previous", "first", "other")
CLASS_DESCRIPTIONS = {
    "all": "every part, whatever its position",
    "target": "parts at the target position t (FFN, residual) or attention reading from t",
    "previous": "parts reading from position t - 1 (when that is not position 0)",
    "first": "parts reading from position 0, the BOS token when the model adds one (when 0 != t)",
    "other": "parts reading from any other position",
}
KINDS = ("head", "ffn", "residual")


@dataclass(frozen=True)
class Component:
    """A head (``head`` >= 0) or a layer's FFN block or residual stream (``head`` = -1)."""

    kind: str
    layer: int
    head: int = -1

    @property
    def id(self) -> str:
        """``L3.H5``, ``L3.FFN``, ``L3.res``: what figures carry in customdata."""
        suffix = {"ffn": "FFN", "residual": "res"}.get(self.kind, f"H{self.head}")
        return f"L{self.layer}.{suffix}"

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """Heads, then FFN blocks, then residuals; by layer and head within each."""
        return KINDS.index(self.kind), self.layer, self.head


def parse_component_id(text: str) -> Component:
    """Inverse of `Component.id`; anything else is an ArgumentError with an example."""
    layer_part, _, rest = text.partition(".")
    if not layer_part.startswith("L") or not layer_part[1:].isdigit():
        raise ArgumentError(f"not a component id: {text!r} (e.g. 'L3.H5', 'L3.FFN', 'L3.res')")
    layer = int(layer_part[1:])
    if rest == "FFN":
        return Component("ffn", layer)
    if rest == "res":
        return Component("residual", layer)
    if rest.startswith("H") and rest[1:].isdigit():
        return Component("head", layer, int(rest[1:]))
    raise ArgumentError(f"not a component id: {text!r} (e.g. 'L3.H5', 'L3.FFN', 'L3.res')")


def all_components(n_layers: int, n_heads: int) -> list[Component]:
    """Every component of a model, in the order results are sorted in."""
    heads = [Component("head", layer, head) for layer in range(n_layers) for head in range(n_heads)]
    return heads + [Component(kind, layer) for kind in ("ffn", "residual") for layer in range(n_layers)]


def row_key(component: Component, position_class: str) -> tuple[int, int, int, int]:
    """The order of result rows: by component, then position class as listed in POSITION_CLASSES."""
    return (*component.sort_key, POSITION_CLASSES.index(position_class))


def position_class(position: int, target: int) -> str:
    if position == target:
        return "target"
    if position == 0:
        return "first"
    if position == target - 1:
        return "previous"
    return "other"


@dataclass
class Tally:
    """One component in one position class of one graph: summed parts, and whether one passed t."""

    contribution: float = 0.0
    on_route: bool = False

    def add(self, weight: float, threshold: float) -> None:
        self.contribution += weight
        self.on_route = self.on_route or weight > threshold


def graph_tallies(graph: nx.DiGraph) -> dict[tuple[Component, str], Tally]:
    """Every (component, position class) with a part in `graph`, including the class ``all``."""
    target, threshold = graph.graph["target"], graph.graph["threshold"]
    tallies: dict[tuple[Component, str], Tally] = defaultdict(Tally)

    def add(component: Component, position: int, weight: float) -> None:
        if weight <= 0:
            return
        tallies[component, position_class(position, target)].add(weight, threshold)
        tallies[component, "all"].add(weight, threshold)

    for start, end, edge in graph.edges(data=True):
        source, dest = graph.nodes[start], graph.nodes[end]
        layer = dest["layer"]
        if edge["kind"] == "attention":
            for head, weight in enumerate(edge["heads"]):
                add(Component("head", layer, head), source["position"], weight)
            if edge["residual"] > 0:
                add(Component("residual", layer), source["position"], edge["residual"])
        elif edge["kind"] == "residual":
            add(Component("residual", layer), dest["position"], edge["weight"])
        elif edge["kind"] == "ffn" and source["kind"] == "ffn":
            add(Component("ffn", layer), dest["position"], edge["weight"])
    return dict(tallies)

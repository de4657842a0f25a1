"""The edges of a prompt's full route graph, as the units a circuit keeps or ablates.

A unit is a set of parts of one destination node (docs/method.md#the-graph,
`llm_flow.interventions.route`):

* attention ``(l, i, j)``: the edge from the layer input at token j into ``A{l}_i`` (``I{l}_i``
  for parallel blocks): ``z[i, j, h]`` for every head h, and for j == i the residual part too
  (the graph merges the two into one edge);
* residual ``(l, i)``: the edge ``A{l}_i -> I{l}_i``, the part ``resid_mid[i]`` of ``I{l}_i``
  (sequential blocks only);
* FFN ``(l, i)``: the edge ``M{l}_i -> I{l}_i``, the part ``mlp_out[i]``. (The graph's edge into
  ``M{l}_i`` carries the same flow and is not a unit of its own.)

The *full graph* for a target position t is every unit the prediction at t can depend on: all
positions up to t in every layer but the last, where only ``I{L-1}_t``'s own units count (the
last layer's other rows feed no later layer). Budgets are fractions of this count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import pandas as pd
import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run
from llm_flow.routes.nodes import EMBEDDING_LAYER, NodeId

ATTENTION, RESIDUAL, FFN = 0, 1, 2
KIND_NAMES = ("attention", "residual", "ffn")


@dataclass(frozen=True, eq=False)
class Edges:
    """Every unit of one full graph, as parallel index tensors (one entry per edge)."""

    n_layers: int
    n_tokens: int
    parallel: bool
    target: int | None  # None: every position of every layer (`Edges.every`)
    kind: torch.Tensor  # [n] ATTENTION, RESIDUAL or FFN
    layer: torch.Tensor  # [n]
    position: torch.Tensor  # [n] the destination token i
    source: torch.Tensor  # [n] the source token j (== i for residual and FFN units)

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @classmethod
    def for_target(cls, run: Run, target: int = -1) -> "Edges":
        """The full graph of the prediction at `target`."""
        target = run.position(target)
        last = run.n_layers - 1
        return cls._build(run, target, lambda layer: [target] if layer == last else range(target + 1))

    @classmethod
    def every(cls, run: Run) -> "Edges":
        """Every unit of every position and layer (ablating all of them replaces the whole pass)."""
        return cls._build(run, None, lambda layer: range(run.n_tokens))

    @classmethod
    def _build(cls, run: Run, target: int | None, rows) -> "Edges":
        kinds, layers, positions, sources = [], [], [], []

        def add(kind: int, layer: int, i: torch.Tensor, j: torch.Tensor) -> None:
            kinds.append(torch.full_like(i, kind))
            layers.append(torch.full_like(i, layer))
            positions.append(i)
            sources.append(j)

        for layer in range(run.n_layers):
            dest = torch.tensor(list(rows(layer)), dtype=torch.long)
            counts = dest + 1  # sources 0..i of each row
            i = dest.repeat_interleave(counts)
            j = torch.cat([torch.arange(int(n)) for n in counts])
            add(ATTENTION, layer, i, j)
            if not run.parallel:
                add(RESIDUAL, layer, dest, dest)
            add(FFN, layer, dest, dest)
        return cls(run.n_layers, run.n_tokens, run.parallel, target,
                   *(torch.cat(t) for t in (kinds, layers, positions, sources)))  # fmt: skip

    # --- lookups ------------------------------------------------------------------------------

    @cached_property
    def _index(self) -> dict[tuple[int, int, int, int], int]:
        keys = zip(self.kind.tolist(), self.layer.tolist(), self.position.tolist(), self.source.tolist())
        return {key: n for n, key in enumerate(keys)}

    def find(self, kind: int, layer: int, position: int, source: int | None = None) -> int:
        """The index of one unit (`source` only for attention units)."""
        key = (kind, layer, position, position if source is None else source)
        if key not in self._index:
            raise ArgumentError(f"the full graph has no {KIND_NAMES[kind]} edge {key[1:]}")
        return self._index[key]

    def names(self, index: int) -> tuple[str, str]:
        """(source node, destination node) of unit `index`, as the route graph names them."""
        kind, layer = int(self.kind[index]), int(self.layer[index])
        i, j = int(self.position[index]), int(self.source[index])
        if kind == ATTENTION:
            source = NodeId("X", EMBEDDING_LAYER, j) if layer == 0 else NodeId("I", layer - 1, j)
            return str(source), str(NodeId("I" if self.parallel else "A", layer, i))
        if kind == RESIDUAL:
            return str(NodeId("A", layer, i)), str(NodeId("I", layer, i))
        return str(NodeId("M", layer, i)), str(NodeId("I", layer, i))

    def frame(self, scores: torch.Tensor | None = None) -> pd.DataFrame:
        """One row per unit: kind, layer, positions, node names (and a score column if given)."""
        frame = pd.DataFrame({
            "kind": [KIND_NAMES[k] for k in self.kind.tolist()],
            "layer": self.layer.numpy(), "position": self.position.numpy(), "source_position": self.source.numpy(),
        })  # fmt: skip
        names = [self.names(n) for n in range(len(self))]
        frame["source"], frame["dest"] = [s for s, _ in names], [d for _, d in names]
        if scores is not None:
            frame["score"] = scores.double().numpy()
        return frame

    def gather(self, attention: torch.Tensor, residual: torch.Tensor | None, ffn: torch.Tensor) -> torch.Tensor:
        """Per-unit values from per-layer tables: attention [L, T, T] (destination, source),
        residual and FFN [L, T] (destination): [n]."""
        out = torch.zeros(len(self), dtype=attention.dtype)
        for kind, table in ((ATTENTION, attention), (RESIDUAL, residual), (FFN, ffn)):
            rows = self.kind == kind
            if not bool(rows.any()):
                continue
            layer, position = self.layer[rows], self.position[rows]
            out[rows] = table[layer, position, self.source[rows]] if kind == ATTENTION else table[layer, position]
        return out

    # --- circuits -----------------------------------------------------------------------------

    def mask_of_graph(self, graph: nx.DiGraph) -> torch.Tensor:
        """The units a route graph keeps: bool [n]. Edges into ``M`` nodes carry the flow of
        ``M -> I`` and add nothing of their own."""
        if graph.graph.get("n_layers") != self.n_layers or graph.graph.get("n_tokens") != self.n_tokens:
            raise ArgumentError("this route graph was built for another prompt or model: build it from the same run")
        kept = torch.zeros(len(self), dtype=torch.bool)
        for source, dest, data in graph.edges(data=True):
            end = NodeId.parse(dest)
            if end.kind == "M":
                continue
            kind = {"attention": ATTENTION, "residual": RESIDUAL, "ffn": FFN}[data["kind"]]
            start = graph.nodes[source]["position"]
            if (end.layer, end.position) not in self._rows:
                raise ArgumentError(f"the route edge {source} -> {dest} is outside the full graph of token {self.target}")
            kept[self.find(kind, end.layer, end.position, start)] = True
        return kept

    @cached_property
    def _rows(self) -> set[tuple[int, int]]:
        return set(zip(self.layer.tolist(), self.position.tolist()))

    def check_mask(self, mask: object) -> torch.Tensor:
        """A bool tensor with one entry per unit, or a clear error."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (len(self),):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ArgumentError(
                f"a circuit is a route graph or a bool tensor with one entry per edge of the full graph "
                f"({len(self):,}); got {shape}"
            )
        return mask

"""Typed names of route-graph nodes and edges, and the one table that says what each kind is.

A node is ``X_i`` (embedding of token i), ``A{l}_i`` (residual after attention), ``M{l}_i`` (FFN
block) or ``I{l}_i`` (residual after layer l). In an encoder–decoder's route every name carries its
stack (``enc:I1_3``, ``dec:A0_2``) and decoder layers have ``C{l}_t`` (residual after
cross-attention); decoder-only and encoder graphs keep the plain names. Graphs, figures, panels, permalinks and exports
all name nodes through :class:`NodeId` and edges through :class:`EdgeId`, so the spelling and the
meaning of a kind live here only. Kept free of torch: the CLI and URL parsing use it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_flow.errors import ArgumentError


@dataclass(frozen=True)
class KindSpec:
    """Everything the graph, its figure and its panels need to know about one kind of node."""

    letter: str  # the prefix of the node name
    attribute: str  # the ``kind`` attribute of the graph node (stable in exported JSON)
    label: str  # how a person calls it
    symbol: str  # plotly marker symbol
    color: str
    size: int


KINDS: dict[str, KindSpec] = {
    spec.letter: spec
    for spec in (
        KindSpec("X", "embedding", "token embedding", "circle", "#54a24b", 10),
        KindSpec("A", "resid_mid", "residual after attention", "circle", "#bab0ac", 8),
        KindSpec("M", "ffn", "FFN block", "square", "#d6608f", 8),
        KindSpec("I", "resid_post", "residual after the layer", "circle", "#79706e", 9),
        KindSpec("C", "resid_cross", "residual after cross-attention", "diamond", "#f58518", 8),
    )
}
EMBEDDING_LAYER = -1  # X nodes come before layer 0
#: The stacks of an encoder–decoder and the prefix of their node names (``enc:I1_3``).
STACK_PREFIXES = {"encoder": "enc:", "decoder": "dec:"}


@dataclass(frozen=True, order=True)
class NodeId:
    """One node of a route graph. ``str(NodeId("A", 5, 3)) == "A5_3"``; layer -1 for ``X``.
    `stack` is None in decoder-only and encoder graphs, "encoder" or "decoder" in an
    encoder–decoder's (``str(NodeId("C", 1, 2, "decoder")) == "dec:C1_2"``)."""

    kind: str
    layer: int
    position: int
    stack: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArgumentError(f"unknown node kind {self.kind!r} (use one of {', '.join(KINDS)})")
        if self.stack is not None and self.stack not in STACK_PREFIXES:
            raise ArgumentError(f"unknown stack {self.stack!r} (use one of {', '.join(STACK_PREFIXES)})")
        if (
            (self.kind == "X") != (self.layer == EMBEDDING_LAYER)
            or self.position < 0
            or (self.kind == "C" and self.stack != "decoder")  # only an encoder–decoder's decoder cross-attends
        ):
            raise ArgumentError(f"no such node: kind {self.kind!r}, layer {self.layer}, position {self.position}")

    def __str__(self) -> str:
        name = f"X_{self.position}" if self.kind == "X" else f"{self.kind}{self.layer}_{self.position}"
        return name if self.stack is None else STACK_PREFIXES[self.stack] + name

    @classmethod
    def parse(cls, name: str) -> "NodeId":
        """``"A5_3"`` -> ``NodeId("A", 5, 3)``, ``"enc:I1_0"`` -> ``NodeId("I", 1, 0, "encoder")``;
        anything else is refused with an example."""
        text, stack = str(name), None
        for which, prefix in STACK_PREFIXES.items():
            if text.startswith(prefix):
                text, stack = text[len(prefix) :], which
        kind, rest = text[:1], text[1:]
        layer, _, position = rest.partition("_")
        if kind not in KINDS or not position.isdigit() or not (layer == "" if kind == "X" else layer.isdigit()):
            raise ArgumentError(
                f"{name!r} is not a route-graph node name (e.g. 'X_0', 'A3_5', 'M3_5', 'I3_5'; in an "
                "encoder–decoder 'enc:I1_0', 'dec:C2_3')"
            )
        return cls(kind, EMBEDDING_LAYER if kind == "X" else int(layer), int(position), stack)

    @property
    def spec(self) -> KindSpec:
        return KINDS[self.kind]

    @property
    def is_residual(self) -> bool:
        """X, A, C and I are residual-stream states; M is a block."""
        return self.kind != "M"


EDGE_SEPARATOR = "->"


@dataclass(frozen=True)
class EdgeId:
    """One edge of a route graph, named ``"I4_1->A5_3"`` in figures, panels and links."""

    source: NodeId
    target: NodeId

    def __str__(self) -> str:
        return f"{self.source}{EDGE_SEPARATOR}{self.target}"

    @classmethod
    def parse(cls, name: str) -> "EdgeId":
        parts = str(name).split(EDGE_SEPARATOR)
        if len(parts) != 2:
            raise ArgumentError(f"{name!r} is not a route-graph edge name (e.g. 'I4_1->A5_3')")
        return cls(NodeId.parse(parts[0]), NodeId.parse(parts[1]))

    @property
    def pair(self) -> tuple[str, str]:
        """The (source, target) node names: how networkx knows the edge."""
        return str(self.source), str(self.target)


def parse_element(name: str) -> NodeId | EdgeId:
    """A node or an edge name, as clicked in a figure or written in a link."""
    return EdgeId.parse(name) if EDGE_SEPARATOR in str(name) else NodeId.parse(name)

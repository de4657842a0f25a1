"""The parts a forward pass can lose, and a validated, compact set of them (an `Ablation`).

The parts are those of DESIGN.md §1, so that removing a part removes exactly what its
contribution measured:

* `AttentionPart(layer, query, source, head)`: ``z[i, j, h] = A[h, i, j] (v[j, kv(h)] + b_V) W_O[h]``
  (times the post-norm gain on Gemma-style blocks, through the linearised LayerNorm on post-LN
  encoders), a part of ``A{layer}_i`` (of ``I{layer}_i`` for parallel blocks). In a decoder the
  source is at most the query; an encoder's query reads every source, after it too.
* `ResidualPart(layer, position, node)`: the residual stream as a part of the graph node
  ``node{layer}_position``: ``resid_pre[i]`` in ``A{l}_i``, ``resid_mid[i]`` in ``I{l}_i``
  (parallel blocks: ``resid_pre[i]`` in ``I{l}_i``, and there is no ``A`` node).
* `FfnPart(layer, position)`: the FFN output ``mlp_out[i]``, a part of ``I{layer}_i``.

Route checks remove hundreds of thousands of attention parts at once, so an `Ablation` keeps
them per layer as index rows, not as Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.models.run import Run
from llm_flow.models.seq2seq_run import Seq2SeqRun

FfnMode = Literal["zero", "mean"]
FFN_MODES: tuple[str, ...] = ("zero", "mean")


class AttentionPart(NamedTuple):
    """What head `head` moved from token `source` into the residual at token `query`."""

    layer: int
    query: int
    source: int
    head: int


class ResidualPart(NamedTuple):
    """The residual stream as a part of graph node ``A{layer}_position`` or ``I{layer}_position``."""

    layer: int
    position: int
    node: Literal["A", "I"]


class FfnPart(NamedTuple):
    """The FFN block's output at `position` (graph node ``M{layer}_position``)."""

    layer: int
    position: int


Part = AttentionPart | ResidualPart | FfnPart


@dataclass(frozen=True, eq=False)
class LayerRemoval:
    """What one layer loses. Residual sets name the representation the residual is a part of.

    The two ``*_added`` vectors go where removed parts were: patching and mean ablation remove
    a part as the pass computes it and add the value it has elsewhere (a counterfactual prompt,
    a reference mean). They are fixed in advance, not recomputed in the pass."""

    attention: torch.Tensor  # [n, 3] int64 rows (query i, source j, head h), unique; j <= i in a decoder
    residual_attention: frozenset[int]  # resid_pre[i] leaves A{l}_i (parallel blocks: I{l}_i)
    residual_ffn: frozenset[int]  # resid_mid[i] leaves I{l}_i (sequential blocks only)
    ffn: frozenset[int]  # mlp_out[i] is zeroed or mean-replaced
    attention_added: torch.Tensor | None = None  # [T, d] added to what attention adds to the residual
    ffn_added: torch.Tensor | None = None  # [T, d] added to what the FFN adds to the residual

    @property
    def n_parts(self) -> int:
        return len(self.attention) + len(self.residual_attention) + len(self.residual_ffn) + len(self.ffn)


@dataclass(frozen=True, eq=False)
class Ablation:
    """A set of parts to remove from one forward pass of one prompt."""

    n_tokens: int
    layers: Mapping[int, LayerRemoval]
    ffn_mode: FfnMode = "zero"

    @property
    def n_parts(self) -> int:
        return sum(removal.n_parts for removal in self.layers.values())


def check_run(run: object) -> None:
    """Interventions re-run one prompt through the model's TransformerLens hooks: a `Run` of a
    decoder-only or encoder model. An encoder–decoder's run of a source and a target has neither."""
    if isinstance(run, Seq2SeqRun):
        model = run.model
        raise UnsupportedModelError(
            f"{model.name}: {model.info.architecture} is an encoder–decoder: interventions and route checks "
            "re-run one prompt through TransformerLens hooks, which llm-flow has for decoder-only and encoder "
            "models only so far; its routes across the two stacks are llm_flow.seq2seq_route(run, position)"
        )
    if not isinstance(run, Run):
        raise ArgumentError(f"interventions take a Run (model.run(prompt)), not {type(run).__name__}")


def ablation(run: Run, parts: Iterable[Part], ffn_mode: FfnMode = "zero") -> Ablation:
    """Validate `parts` against `run`'s model and prompt; duplicates count once."""
    check_run(run)
    check_ffn_mode(ffn_mode)
    attention: dict[int, list[tuple[int, int, int]]] = {}
    sets: dict[int, tuple[set[int], set[int], set[int]]] = {}
    for part in parts:
        if isinstance(part, AttentionPart):
            layer, query, source, head = _attention_part(run, part)
            attention.setdefault(layer, []).append((query, source, head))
        elif isinstance(part, ResidualPart):
            layer, position, which = _residual_part(run, part)
            sets.setdefault(layer, (set(), set(), set()))[which].add(position)
        elif isinstance(part, FfnPart):
            layer, position = _check_layer(run, part.layer, part), _check_position(run, part.position, part)
            sets.setdefault(layer, (set(), set(), set()))[2].add(position)
        else:
            raise ArgumentError(
                f"{part!r} is not a part: use AttentionPart(layer, query, source, head), "
                "ResidualPart(layer, position, 'A' or 'I') or FfnPart(layer, position)"
            )
    layers = {}
    for layer in sorted(set(attention) | set(sets)):
        rows = torch.tensor(attention.get(layer, []), dtype=torch.long).reshape(-1, 3)
        res_attn, res_ffn, ffn = sets.get(layer, (set(), set(), set()))
        layers[layer] = LayerRemoval(torch.unique(rows, dim=0), frozenset(res_attn), frozenset(res_ffn), frozenset(ffn))
    return Ablation(run.n_tokens, layers, ffn_mode)


def check_ffn_mode(ffn_mode: str) -> str:
    if ffn_mode not in FFN_MODES:
        raise ArgumentError(f"ffn_mode must be 'zero' or 'mean' (got {ffn_mode!r})")
    return ffn_mode


def n_heads(run: Run) -> int:
    return run.layer(0).pattern.n_heads


def n_sources(run: Run, query: int) -> int:
    """How many sources query row `query` reads: query + 1 in a decoder, every token in an encoder."""
    return int(run.layer(0).pattern.source_counts(torch.tensor([query]))[0])


def _attention_part(run: Run, part: AttentionPart) -> tuple[int, int, int, int]:
    layer = _check_layer(run, part.layer, part)
    query, source = _check_position(run, part.query, part), _check_position(run, part.source, part)
    if source >= n_sources(run, query):
        raise ArgumentError(
            f"{part}: source {source} comes after query {query}; in this decoder a token only reads earlier ones"
        )
    heads = n_heads(run)
    if not isinstance(part.head, int) or not 0 <= part.head < heads:
        raise ArgumentError(f"{part}: head must be 0..{heads - 1} (got {part.head!r})")
    return layer, query, source, part.head


def _residual_part(run: Run, part: ResidualPart) -> tuple[int, int, int]:
    """(layer, position, which set): 0 = residual of the attention representation, 1 = of I."""
    layer, position = _check_layer(run, part.layer, part), _check_position(run, part.position, part)
    if part.node not in ("A", "I"):
        raise ArgumentError(f"{part}: node must be 'A' (after attention) or 'I' (after the layer)")
    if run.parallel:
        if part.node == "A":
            raise ArgumentError(
                f"{part}: this model has parallel attention and FFN blocks, so there is no A node; "
                f"the residual part of I{layer}_{position} is ResidualPart({layer}, {position}, 'I')"
            )
        return layer, position, 0
    return layer, position, 0 if part.node == "A" else 1


def _check_layer(run: Run, layer: object, part: object) -> int:
    if not isinstance(layer, int) or not 0 <= layer < run.n_layers:
        raise ArgumentError(f"{part}: layer must be 0..{run.n_layers - 1} (got {layer!r})")
    return layer


def _check_position(run: Run, position: object, part: object) -> int:
    if not isinstance(position, int) or not 0 <= position < run.n_tokens:
        raise ArgumentError(
            f"{part}: token positions must be 0..{run.n_tokens - 1} for this {run.n_tokens}-token prompt "
            f"(got {position!r})"
        )
    return position

"""One faithfulness question: a clean run, what ablated edges carry instead, and the metric.

Ablating an edge happens *in its destination node*: the node's value becomes its kept parts as
the pass computes them, plus its ablated parts at their ablated value (`values`), plus the
biases that belong to no part. Kept parts are recomputed in the pass (an ablation upstream
changes them), as MIB and EAP-IG evaluate circuits. Biases, norms, the embeddings themselves and
the unembedding are never removed; only edges are.

    f(C) = (m(C) - m(∅)) / (m(M) - m(∅))

with m(M) the clean run (nothing ablated) and m(∅) every edge of the full graph ablated the
same way, so f(full graph) = 1 and f(nothing) = 0 by construction, and f can exceed 1. The
*completeness* of C is f of its complement: near 0 when C holds everything that matters.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import numpy as np
import torch

from llm_flow.views.tokens import single_token
from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.faithfulness.edges import ATTENTION, FFN, RESIDUAL, Edges
from llm_flow.faithfulness.settings import METRICS, AblationSpec
from llm_flow.faithfulness.values import PartValues, RunValues, ZeroValues, ablation_values
from llm_flow.interventions.forward import ablated_logits
from llm_flow.interventions.parts import Ablation, LayerRemoval
from llm_flow.models.families import refuse_encoder
from llm_flow.models.run import Run

#: Why encoders get no faithfulness check (the route check works on them).
NO_FAITHFULNESS = (
    "faithfulness checks score and ablate a decoder's edges (each token reads only the tokens before "
    "it), and patching or mean ablation would put values into post-LN blocks, which is not implemented; "
    "the route check (route only, route removed, random routes) works on encoders"
)


@dataclass(frozen=True)
class Contrast:
    """What the metric reads: the answer against the foil at one position."""

    answer: int
    foil: int
    position: int
    metric: str = "logit_diff"  # answer's logit - foil's, or the answer's probability

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ArgumentError(f"metric must be one of {', '.join(METRICS)} (got {self.metric!r})")

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric of logits [..., vocab] at the contrast's position: [...]."""
        logits = logits.float()
        if self.metric == "probability":
            return logits.softmax(-1)[..., self.answer]
        return logits[..., self.answer] - logits[..., self.foil]


@dataclass(frozen=True)
class Faithfulness:
    """A circuit's share of the model's behaviour, and what its complement keeps."""

    edges: int  # units the circuit keeps
    total: int  # units of the full graph
    faithfulness: float  # f(C)
    completeness: float  # f(full graph minus C): near 0 = nothing outside C matters
    metric: float  # m(C)
    complement_metric: float  # m(M \\ C)
    full: float  # m(M), the clean run
    empty: float  # m(∅), every edge ablated


@dataclass(frozen=True, eq=False)
class Problem:
    """Everything `faithfulness`, the scorers and the budget curves need for one prompt."""

    run: Run
    spec: AblationSpec
    contrast: Contrast
    edges: Edges
    values: PartValues
    _memo: dict[bytes, float] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def model(self):
        return self.run.model

    @cached_property
    def full(self) -> float:
        """m(M): the clean run's metric, by the same pass as every m(C) (every edge kept), so a
        circuit's share never mixes two ways of computing the logits."""
        return self.metric(torch.ones(len(self.edges), dtype=torch.bool))

    @cached_property
    def empty(self) -> float:
        """m(∅): every edge of the full graph ablated."""
        return self.metric(torch.zeros(len(self.edges), dtype=torch.bool))

    @cached_property
    def inert(self) -> torch.Tensor:
        """Units whose ablated value is their clean value, bool [n]: keeping or ablating them
        changes nothing. Under patching on a causal model, every unit into a token before the
        first one where the two prompts differ (everything there is the same in both runs)."""
        if not isinstance(self.values, RunValues) or self.model.info.bidirectional:
            return torch.zeros(len(self.edges), dtype=torch.bool)
        differ = torch.nonzero(self.run.tokens != self.values.run.tokens).flatten()
        first = int(differ[0]) if len(differ) else self.run.n_tokens
        return self.edges.position < first

    def normalised(self, metric: float) -> float:
        """f for a metric value; NaN when ablating everything leaves the metric unchanged."""
        span = self.full - self.empty
        return (metric - self.empty) / span if span != 0 else float("nan")

    def metric(self, kept: torch.Tensor) -> float:
        """m(C) for the units `kept` (bool [n]): one forward pass, remembered per circuit."""
        key = np.packbits(self.edges.check_mask(kept).numpy()).tobytes()
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        value = float(self.contrast.value(self.logits(kept)[self.contrast.position]))
        with self._lock:
            self._memo[key] = value
        return value

    def logits(self, kept: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] with every unit outside `kept` ablated into its destination."""
        return ablated_logits(self.run, self.removal(kept))

    def removal(self, kept: torch.Tensor) -> Ablation:
        """`kept`'s complement as an intervention: the parts removed as the pass computes them,
        and their ablated values added in their place."""
        edges, values = self.edges, self.values
        ablated = ~self.edges.check_mask(kept)
        zero = isinstance(values, ZeroValues)
        n_heads, n_tokens = self.run.n_heads, self.run.n_tokens
        layers = {}
        for layer, (start, stop) in enumerate(self._layer_slices):
            off = ablated[start:stop]
            kind, i, j = (t[start:stop][off] for t in (edges.kind, edges.position, edges.source))
            attn = kind == ATTENTION
            pairs = torch.zeros(n_tokens, n_tokens, dtype=torch.bool)
            pairs[i[attn], j[attn]] = True
            diagonal = i[attn & (i == j)]
            residual, ffn = i[kind == RESIDUAL], i[kind == FFN]
            rows = _head_rows(i[attn], j[attn], n_heads)
            attention_added = ffn_added = None
            if not zero and bool(attn.any()):
                attention_added = values.attention(layer, pairs)
                attention_added[diagonal] += values.state(layer, "resid_pre")[diagonal]
            if not zero and (len(residual) or len(ffn)):
                ffn_added = torch.zeros_like(self.run.layer(layer).resid_post, dtype=torch.float32)
                if len(residual):
                    ffn_added[residual] += values.state(layer, "resid_mid")[residual]
                ffn_added[ffn] += values.state(layer, "mlp_out")[ffn]
            if len(rows) or len(residual) or len(ffn):
                layers[layer] = LayerRemoval(
                    rows, frozenset(diagonal.tolist()), frozenset(residual.tolist()), frozenset(ffn.tolist()),
                    attention_added, ffn_added,
                )  # fmt: skip
        return Ablation(n_tokens, layers, "zero")

    @cached_property
    def _layer_slices(self) -> list[tuple[int, int]]:
        counts = torch.bincount(self.edges.layer, minlength=self.run.n_layers).tolist()
        bounds = np.cumsum([0, *counts]).tolist()
        return list(zip(bounds[:-1], bounds[1:]))

    def circuit(self, circuit: nx.DiGraph | torch.Tensor) -> torch.Tensor:
        """A route graph (`llm_flow.build_graph`) or a bool mask over `edges`, as a mask."""
        if isinstance(circuit, nx.DiGraph):
            if circuit.graph.get("target") != self.contrast.position:
                raise ArgumentError(
                    f"the route graph explains token {circuit.graph.get('target')}, the check reads token "
                    f"{self.contrast.position}: build both for the same target"
                )
            return self.edges.mask_of_graph(circuit)
        return self.edges.check_mask(circuit)


def prepare(
    run: Run,
    answer: str,
    foil: str,
    ablation: AblationSpec,
    metric: str = "logit_diff",
    target: int = -1,
    references: Sequence[Run] | None = None,
) -> Problem:
    """The faithfulness problem of `run`'s prediction at `target` (answer vs foil, each one
    token). Runs the counterfactual (patching) or the reference prompts (mean; unless their
    runs are given as `references`, see `values.reference_runs`) once."""
    model = run.model
    if getattr(model, "bridge", None) is None:
        raise UnsupportedModelError(f"{model.name}: faithfulness checks need a model loaded through TransformerLens")
    refuse_encoder(model.info, NO_FAITHFULNESS)
    if not isinstance(ablation, AblationSpec):
        raise ArgumentError(f"ablation must be an AblationSpec (got {type(ablation).__name__})")
    position = run.position(target)
    answer_id, foil_id = single_token(model, answer, "answer"), single_token(model, foil)
    if answer_id == foil_id:
        raise ArgumentError(f"the answer and the foil are the same token ({answer!r}): pick a different foil")
    contrast = Contrast(answer_id, foil_id, position, metric)
    values = ablation_values(run, ablation, references)
    return Problem(run, ablation, contrast, Edges.for_target(run, position), values)


def faithfulness(problem: Problem, circuit: nx.DiGraph | torch.Tensor) -> Faithfulness:
    """f and completeness of `circuit` (a route graph or a mask over `problem.edges`): two
    forward passes, plus one the first time (m(∅))."""
    kept = problem.circuit(circuit)
    metric, complement = problem.metric(kept), problem.metric(~kept)
    return Faithfulness(
        edges=int(kept.sum()),
        total=len(problem.edges),
        faithfulness=problem.normalised(metric),
        completeness=problem.normalised(complement),
        metric=metric,
        complement_metric=complement,
        full=problem.full,
        empty=problem.empty,
    )


def _head_rows(i: torch.Tensor, j: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(i, j, h) for every pair and every head: [pairs * heads, 3]."""
    heads = torch.arange(n_heads).repeat(len(i))
    return torch.stack([i.repeat_interleave(n_heads), j.repeat_interleave(n_heads), heads], 1)

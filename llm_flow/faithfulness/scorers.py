"""Edge scorers: how important each unit of the full graph is to the metric, higher = keep.

* `Alti`: the route's own weights (ALTI contributions, docs/method.md), read one of three ways
  (``selection``, measured in benchmarks/faithfulness.py):
  - ``threshold``: the largest threshold at which the pruner keeps the edge, i.e. the weakest
    contribution on the edge's best path to the target (``min(c(e), W(dest))``, W the widest
    path). The top k edges are then exactly the route at some threshold: a budget curve over
    the routes the Explorer draws.
  - ``flow``: the share of the target's representation that flows through the edge,
    ``c(e) * flow(dest)`` with flow(target) = 1 and flow(node) = Σ c(out edge) flow(its dest):
    rollout on the graph, comparable across destinations.
  - ``contribution``: the raw contribution c(e), normalised per destination node (what MIB
    had to pick greedily from).
  With ``changed_only``, the edges the ablation leaves unchanged (`Problem.inert`: under
  patching, those into tokens before the first one where the prompts differ) rank last: keeping
  them spends budget on edges whose ablation cannot move the metric.
* `Eap`: edge attribution patching, the first-order estimate of what ablating the edge costs:
  ``score = -(z_ablated - z_clean) · ∂m/∂(destination node)``, z summed over the edge's parts.
* `EapIg`: the same with the gradient averaged over `steps` points between the ablated and the
  clean input embeddings (Hanna et al. 2024).
* `Random`: uniform random scores, the baseline.

EAP's score is signed (an edge can help the foil); ALTI's and random ones are not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from llm_flow.errors import ArgumentError
from llm_flow.validation import check_choice, check_positive, check_seed
from llm_flow.faithfulness.gradients import NodeGradients, node_gradients
from llm_flow.faithfulness.problem import Problem
from llm_flow.faithfulness.settings import SELECTIONS
from llm_flow.faithfulness.values import RunValues
from llm_flow.routes.contributions import full_contributions


class Scorer(ABC):
    """One way to score edges. Subclasses are frozen dataclasses whose fields are options."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]

    @abstractmethod
    def scores(self, problem: Problem) -> torch.Tensor:
        """One score per unit of `problem.edges`: float [n]."""

    @property
    def key(self) -> str:
        """The name, with the options that differ from their defaults: ``alti[selection=flow]``."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != f.default]  # type: ignore[arg-type]
        return f"{self.name}[{','.join(changed)}]" if changed else self.name

    @classmethod
    def options(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def settings(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.options()}


@dataclass(frozen=True)
class Alti(Scorer):
    """ALTI contributions of the route graph, from the Run: no extra pass."""

    name: ClassVar[str] = "alti"
    label: ClassVar[str] = "ALTI routes"
    summary: ClassVar[str] = "The information-flow route's contributions (no extra forward pass)."

    selection: str = "threshold"
    changed_only: bool = False

    def __post_init__(self) -> None:
        check_choice("selection", self.selection, SELECTIONS)
        if not isinstance(self.changed_only, bool):
            raise ArgumentError(f"changed_only must be True or False (got {self.changed_only!r})")

    def scores(self, problem: Problem) -> torch.Tensor:
        run, target = problem.run, problem.contrast.position
        layers = full_contributions(run)
        attention = torch.stack([c.heads.sum(-1) + torch.diag(c.residual) for c in layers])  # [L, T, T]
        residual = None if run.parallel else torch.stack([c.ffn_residual for c in layers])  # [L, T]
        ffn = torch.stack([c.ffn for c in layers])
        if self.selection != "contribution":
            attention, residual, ffn = _reach(attention, residual, ffn, target, self.selection == "flow")
        scores = problem.edges.gather(attention, residual, ffn).float()
        if self.changed_only:  # the others above them (contributions are in [0, 1]; scores stay >= 0,
            scores = torch.where(problem.inert, scores.double(), scores.double() + 1.0)  # float64 keeps their order)
        return scores


def _reach(attention, residual, ffn, target: int, flow: bool):
    """Top-down from ``I{L-1}_target``: each unit's flow (products, summed over paths) or its
    widest-path bottleneck (minima, best path)."""
    combine = torch.mul if flow else torch.minimum
    n_layers, n_tokens = ffn.shape
    reach = torch.zeros(n_tokens)  # of I{l}_i, for the layer being walked
    reach[target] = 1.0  # contributions are <= 1, so 1 acts as "no bottleneck"
    out_attention, out_residual, out_ffn = torch.zeros_like(attention), torch.zeros_like(ffn), torch.zeros_like(ffn)
    for layer in reversed(range(n_layers)):
        out_ffn[layer] = combine(ffn[layer], reach)
        if residual is None:  # parallel: attention edges enter I, the FFN reads the layer input
            dest = reach
        else:
            out_residual[layer] = combine(residual[layer], reach)
            both = torch.stack([out_residual[layer], out_ffn[layer]])
            dest = both.sum(0) if flow else both.amax(0)  # of A{l}_i
        out_attention[layer] = combine(attention[layer], dest[:, None])
        into = out_attention[layer].sum(0) if flow else out_attention[layer].amax(0)  # of the layer input j
        if residual is None:
            into = into + out_ffn[layer] if flow else torch.maximum(into, out_ffn[layer])
        reach = into
    return out_attention, None if residual is None else out_residual, out_ffn


@dataclass(frozen=True)
class Eap(Scorer):
    """Edge attribution patching: one forward and one backward pass."""

    name: ClassVar[str] = "eap"
    label: ClassVar[str] = "EAP"
    summary: ClassVar[str] = "Edge attribution patching: first-order effect of ablating each edge (one gradient pass)."

    def scores(self, problem: Problem) -> torch.Tensor:
        return edge_effects(problem, node_gradients(problem)).neg()


@dataclass(frozen=True)
class EapIg(Scorer):
    """EAP with integrated gradients on the input embeddings."""

    name: ClassVar[str] = "eap-ig"
    label: ClassVar[str] = "EAP-IG"
    summary: ClassVar[str] = (
        "EAP with the gradient averaged between the ablated and the clean input (steps gradient passes)."
    )

    steps: int = 5

    def __post_init__(self) -> None:
        check_positive("steps", self.steps, 1, 256)

    def scores(self, problem: Problem) -> torch.Tensor:
        return edge_effects(problem, node_gradients(problem, self.steps)).neg()


@dataclass(frozen=True)
class Random(Scorer):
    """Uniform random scores: the baseline every scorer should beat."""

    name: ClassVar[str] = "random"
    label: ClassVar[str] = "Random"
    summary: ClassVar[str] = "Random edges: the baseline."

    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed)

    def scores(self, problem: Problem) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(len(problem.edges), generator=generator)


def edge_effects(problem: Problem, grads: NodeGradients) -> torch.Tensor:
    """First-order change of the metric when each unit alone is ablated:
    (z_ablated - z_clean) · ∂m/∂(destination): [n]."""
    run, values = problem.run, problem.values
    clean = RunValues(run)
    into_attention = grads.resid_post if run.parallel else grads.resid_mid
    attention, residual, ffn = [], [], []

    def delta(layer: int, name: str) -> torch.Tensor:
        return values.state(layer, name) - clean.state(layer, name)

    for layer in range(run.n_layers):
        grad = into_attention[layer]  # [T, d]
        effect = values.attention_dot(layer, grad) - clean.attention_dot(layer, grad)  # [T, T]
        effect += torch.diag((delta(layer, "resid_pre") * grad).sum(-1))
        attention.append(effect)
        post = grads.resid_post[layer]
        if not run.parallel:
            residual.append((delta(layer, "resid_mid") * post).sum(-1))
        ffn.append((delta(layer, "mlp_out") * post).sum(-1))
    stacked_residual = torch.stack(residual) if residual else None
    return problem.edges.gather(torch.stack(attention), stacked_residual, torch.stack(ffn))

"""FFN neurons of one node ranked by how much of the residual after the FFN they account for;
for a mixture of experts, the node split by expert and the neurons of one expert."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run
from llm_flow.routes.contributions import ffn_parts, neuron_contributions
from llm_flow.routes.proximity import vector_proximity
from llm_flow.views.tokens import check_count

SHARED = -1  # the shared expert of Qwen2-MoE, in `expert` fields and arguments


@dataclass(frozen=True)
class NeuronShare:
    neuron: int  # index among the node's neurons (for a mixture of experts: the token's active ones)
    contribution: float
    activation: float
    expert: int | None = None  # mixture of experts: the neuron's expert (SHARED for the shared one)
    expert_neuron: int | None = None  # its index within that expert


@dataclass(frozen=True)
class ExpertShare:
    expert: int  # SHARED for the shared expert
    router_weight: float  # what the router multiplied the expert's output by (the shared gate)
    contribution: float  # share of the residual after the FFN, by the same proximity as the rest


def top_neurons(run: Run, layer: int, position: int, k: int = 20, expert: int | None = None) -> list[NeuronShare]:
    """The `k` neurons with the largest shares; with `expert`, only that expert's (the ranking
    is the same under any normalisation: each neuron's proximity does not depend on the others)."""
    check_count(k)
    contributions, _ = neuron_contributions(run, layer, position)
    act = run.layer(layer)
    position = run.position(position)
    acts = act.neuron_acts[position]
    routing = act.experts
    places = [_place(routing, position, n) for n in range(len(contributions))]
    if expert is not None:
        if routing is None:
            raise ArgumentError(f"layer {layer} has no experts: it is a dense FFN")
        chosen = [n for n, (e, _) in enumerate(places) if e == expert]
        if not chosen:
            raise ArgumentError(f"token {position} did not use expert {expert} in layer {layer}")
        keep = torch.zeros_like(contributions, dtype=torch.bool)
        keep[chosen] = True
        contributions = torch.where(keep, contributions, torch.full_like(contributions, -1.0))
    top = torch.topk(contributions, min(k, int((contributions >= 0).sum())))
    return [NeuronShare(n, float(c), float(acts[n]), *places[n]) for n, c in zip(top.indices.tolist(), top.values.tolist())]


def _place(routing, position: int, neuron: int) -> tuple[int | None, int | None]:
    """(expert, index within it) of an active neuron; (None, None) in a dense FFN."""
    if routing is None:
        return None, None
    expert, within = routing.slot(position, neuron)
    return (SHARED if expert is None else expert), within


def expert_shares(run: Run, layer: int, position: int) -> tuple[list[ExpertShare], float]:
    """A mixture-of-experts node split by expert: each expert the token used (weighted output)
    is one part of the residual after the FFN, beside the residual; their shares sum to 1 with
    the residual's (returned second). Experts by decreasing share."""
    act = run.layer(layer)
    routing = act.experts
    if routing is None:
        raise ArgumentError(f"layer {layer} has no experts: it is a dense FFN")
    position = run.position(position)
    parts = ffn_parts(run, layer, position)
    width, k = routing.width, routing.indices.shape[1]
    outputs = [parts.pieces[s * width : (s + 1) * width].sum(0) for s in range(k)]
    experts = routing.indices[position].tolist()
    weights = routing.weights[position].tolist()
    if parts.pieces.shape[0] > k * width:
        outputs.append(parts.pieces[k * width :].sum(0))
        experts.append(SHARED)
        weights.append(1.0 if routing.shared_gate is None else float(routing.shared_gate[position]))
    proximities = vector_proximity(parts.whole, torch.stack(outputs))
    residual = vector_proximity(parts.whole, parts.residual)
    total = float(proximities.sum() + residual) or 1.0
    shares = [ExpertShare(e, w, float(p) / total) for e, w, p in zip(experts, weights, proximities.tolist())]
    return sorted(shares, key=lambda share: -share.contribution), float(residual) / total


def expert_label(expert: int | None) -> str:
    """'expert 3', 'shared expert', or '' for a dense FFN's neuron."""
    if expert is None:
        return ""
    return "shared expert" if expert == SHARED else f"expert {expert}"

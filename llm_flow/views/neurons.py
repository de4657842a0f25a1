"""FFN neurons of one node ranked by how much of the residual after the FFN they account for."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_flow.models.run import Run
from llm_flow.routes.contributions import neuron_contributions
from llm_flow.views.tokens import check_count


@dataclass(frozen=True)
class NeuronShare:
    neuron: int
    contribution: float
    activation: float


def top_neurons(run: Run, layer: int, position: int, k: int = 20) -> list[NeuronShare]:
    check_count(k)
    contributions, _ = neuron_contributions(run, layer, position)
    top = torch.topk(contributions, min(k, contributions.shape[0]))
    acts = run.layer(layer).neuron_acts[run.position(position)]
    return [NeuronShare(n, float(c), float(acts[n])) for n, c in zip(top.indices.tolist(), top.values.tolist())]

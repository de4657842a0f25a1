"""Per-expert statistics of a mixture-of-experts model over a dataset.

For every explained position ``t`` (the target of one route graph) and every layer ``l`` whose
FFN is a mixture of experts, the FFN node ``M{l}_t`` is the router-weighted sum of the experts
the router chose for token ``t`` (plus, in Qwen2-MoE, the shared expert, which every token uses).
Per (layer, expert):

* **selected**: the explained positions at which the router chose the expert (its own top-k);
* **share**: the expert's share of the FFN node, by the same proximity as every other part
  (``llm_flow.views.neurons.expert_shares``), renormalised over the node's experts so that the
  shares of one node sum to 1; summed over the positions that chose it;
* **contribution**: the expert's part of the FFN node's contribution to the route, i.e. the
  weight of the kept edge ``M{l}_t -> I{l}_t`` (0 when the route does not keep it) times the
  expert's share; summed over the graphs.

Only the FFN node at the explained position itself is read: it is the one every route of that
position starts from, and where the router's choice is the choice for the explained token.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from llm_flow.models.run import Run
from llm_flow.routes.nodes import NodeId
from llm_flow.views.neurons import expert_shares

@dataclass
class ExpertTally:
    """One (layer, expert) over the graphs of one prompt; `expert` -1 is the shared expert."""

    layer: int
    expert: int
    selected: int = 0
    share: float = 0.0
    contribution: float = 0.0


def add_expert_tallies(tallies: dict[tuple[int, int], ExpertTally], run: Run, graph: nx.DiGraph) -> None:
    """Add the graph of one explained position to `tallies` ((layer, expert) -> tally); a dense
    model adds nothing."""
    target = graph.graph["target"]
    for layer in range(run.n_layers):
        if run.layer(layer).experts is None:
            continue
        shares, _ = expert_shares(run, layer, target)
        total = sum(share.contribution for share in shares)
        edge = graph.get_edge_data(str(NodeId("M", layer, target)), str(NodeId("I", layer, target)))
        route_weight = 0.0 if edge is None else float(edge["weight"])
        for share in shares:
            within = share.contribution / total if total > 0 else 0.0
            tally = tallies.setdefault((layer, share.expert), ExpertTally(layer, share.expert))
            tally.selected += 1
            tally.share += within
            tally.contribution += route_weight * within
    return tallies

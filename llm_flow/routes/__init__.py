"""The route maths: contributions (ALTI) and the pruned graph built from them."""

from llm_flow.routes.contributions import (
    attention_contributions,
    ffn_contributions,
    full_contributions,
    neuron_contributions,
)
from llm_flow.routes.graph import build_graph
from llm_flow.routes.seq2seq_graph import seq2seq_route

__all__ = [
    "attention_contributions",
    "build_graph",
    "ffn_contributions",
    "full_contributions",
    "neuron_contributions",
    "seq2seq_route",
]

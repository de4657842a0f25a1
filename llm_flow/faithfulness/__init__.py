"""Faithfulness of circuits, the field's way (MIB, EAP-IG): ablate every edge outside a circuit
into its destination node, and see how much of the model's answer - foil logit difference is
left.

    from llm_flow.faithfulness import AblationSpec, prepare, faithfulness, budget_curve, get_scorer
    problem = prepare(run, " Paris", " Rome", AblationSpec("patching", counterfactual="The capital of Italy is"))
    faithfulness(problem, llm_flow.build_graph(run)).faithfulness       # f of the route
    curve = budget_curve(problem, get_scorer("eap-ig"))                  # f at 0.1 % .. 100 % of the edges
    curve.cpr, curve.cmd, curve.to_frame()
    smallest_circuit(problem, get_scorer("alti"), target=0.8).threshold  # the route threshold to set

Ablations: ``patching`` (from a counterfactual prompt of the same length), ``mean`` (over
reference prompts), ``zero``. Scorers: ``alti``, ``eap``, ``eap-ig``, ``random`` (`SCORERS`).
Sets of prompt pairs: `read_pairs`, `evaluate_pairs` (in-process, or ``engine="ray"``). Names
are imported on first use, so that reading a pair file or checking settings (the CLI does both
first) does not load torch.
"""

from __future__ import annotations

from llm_flow.lazy import lazy_exports

_EXPORTS = {
    "BUDGETS": "curves",
    "BudgetCurve": "curves",
    "SmallestCircuit": "curves",
    "area": "curves",
    "budget_curve": "curves",
    "smallest_circuit": "curves",
    "top_k": "curves",
    "Edges": "edges",
    "Pair": "pairs",
    "read_pairs": "pairs",
    "METRICS": "settings",
    "Contrast": "problem",
    "Faithfulness": "problem",
    "Problem": "problem",
    "faithfulness": "problem",
    "prepare": "problem",
    "SCORERS": "registry",
    "get_scorer": "registry",
    "SELECTIONS": "settings",
    "Alti": "scorers",
    "Eap": "scorers",
    "EapIg": "scorers",
    "Random": "scorers",
    "Scorer": "scorers",
    "PairCurves": "sets",
    "PairsResult": "sets",
    "evaluate_pairs": "sets",
    "MODES": "settings",
    "SCORER_NAMES": "settings",
    "AblationSpec": "settings",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

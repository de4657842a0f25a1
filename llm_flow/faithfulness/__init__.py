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
"""

from llm_flow.faithfulness.curves import BUDGETS, BudgetCurve, SmallestCircuit, area, budget_curve, smallest_circuit, top_k
from llm_flow.faithfulness.edges import Edges
from llm_flow.faithfulness.problem import METRICS, Contrast, Faithfulness, Problem, faithfulness, prepare
from llm_flow.faithfulness.registry import SCORERS, get_scorer
from llm_flow.faithfulness.scorers import SELECTIONS, Alti, Eap, EapIg, Random, Scorer
from llm_flow.faithfulness.values import MODES, AblationSpec

__all__ = [
    "BUDGETS",
    "METRICS",
    "MODES",
    "SCORERS",
    "SELECTIONS",
    "AblationSpec",
    "Alti",
    "BudgetCurve",
    "Contrast",
    "Eap",
    "EapIg",
    "Edges",
    "Faithfulness",
    "Problem",
    "Random",
    "Scorer",
    "SmallestCircuit",
    "area",
    "budget_curve",
    "faithfulness",
    "get_scorer",
    "prepare",
    "smallest_circuit",
    "top_k",
]

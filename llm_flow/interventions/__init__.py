"""Interventions on the forward pass: remove attention, residual and FFN parts and re-run, and
check whether a route carries the prediction (route only, route removed, random baselines)."""

from llm_flow.interventions.route_checks import (
    THRESHOLDS,
    EdgeRemoval,
    RouteCheck,
    check_edge,
    check_route,
    threshold_curve,
)
from llm_flow.interventions.forward import Outcome, ablated_logits, outcome
from llm_flow.interventions.parts import Ablation, AttentionPart, FfnPart, Part, ResidualPart, ablation

__all__ = [
    "THRESHOLDS",
    "Ablation",
    "AttentionPart",
    "EdgeRemoval",
    "FfnPart",
    "Outcome",
    "Part",
    "ResidualPart",
    "RouteCheck",
    "ablated_logits",
    "ablation",
    "check_edge",
    "check_route",
    "outcome",
    "threshold_curve",
]

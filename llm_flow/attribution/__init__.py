"""Input attribution: which input tokens made the model produce each token of a continuation.

    from llm_flow.attribution import attribute
    result = attribute(model, "The capital of France is", "integrated_gradients", generate=3)
    result.scores        # [steps, sources]; result.step_scores["probability"]
    result.by_words().save("paris.json")

Methods (one class each, in `METHODS`): saliency, input x gradient, integrated gradients,
gradient SHAP (captum, on the plain transformers model), occlusion (captum's feature ablation),
attention weights and ALTI rollout (from a route Run).
"""

from llm_flow.attribution.api import attribute, attribute_sequence
from llm_flow.attribution.base import BASELINES, FUNCTIONS, Method
from llm_flow.attribution.internals import alti_rollout, layer_mixing
from llm_flow.attribution.registry import METHODS, get_method
from llm_flow.attribution.result import Attribution, load_attribution
from llm_flow.attribution.scores import step_scores
from llm_flow.attribution.targets import MAX_GENERATE, Sequence, prepare

__all__ = [
    "BASELINES",
    "FUNCTIONS",
    "MAX_GENERATE",
    "METHODS",
    "Attribution",
    "Method",
    "Sequence",
    "alti_rollout",
    "attribute",
    "attribute_sequence",
    "get_method",
    "layer_mixing",
    "load_attribution",
    "prepare",
    "step_scores",
]

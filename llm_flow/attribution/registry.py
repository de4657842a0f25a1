"""Every attribution method by name: one class per method, options as its fields."""

from __future__ import annotations

from llm_flow.attribution.base import Method
from llm_flow.attribution.gradient import GradientShap, InputXGradient, IntegratedGradients, Saliency
from llm_flow.attribution.internals import AltiRollout, Attention
from llm_flow.attribution.perturbation import Occlusion
from llm_flow.validation import build_named

#: name -> class, in the order the app and the CLI offer them.
METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Saliency, InputXGradient, IntegratedGradients, GradientShap, Occlusion, Attention, AltiRollout,
    )
}  # fmt: skip


def get_method(name: str, **options: object) -> Method:
    """The method called `name` (``-`` and ``_`` alike) with its options, checked."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    return build_named(METHODS, key, name, options, "attribution method")

"""Loading models and running prompts through them."""

from llm_flow.models.base import ModelInfo, TransparentLlm
from llm_flow.models.loading import load_model
from llm_flow.models.run import Run

__all__ = ["ModelInfo", "Run", "TransparentLlm", "load_model"]

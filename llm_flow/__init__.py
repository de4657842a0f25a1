"""llm-flow: information-flow routes inside transformer language models.

    import llm_flow
    model = llm_flow.load_model("smollm2-135m")
    run = model.run("The capital of France is")
    graph = llm_flow.build_graph(run, target=-1, threshold=0.04)
"""

from llm_flow.errors import (
    ArgumentError,
    ConfigError,
    LlmFlowError,
    ModelLoadError,
    ModelNotFoundError,
    PromptError,
    UnsupportedModelError,
)
from llm_flow.models import ModelInfo, Run, TransparentLlm, load_model
from llm_flow.routes import (
    attention_contributions,
    build_graph,
    ffn_contributions,
    full_contributions,
    neuron_contributions,
)

__all__ = [
    "ArgumentError",
    "ConfigError",
    "LlmFlowError",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "PromptError",
    "Run",
    "TransparentLlm",
    "UnsupportedModelError",
    "attention_contributions",
    "build_graph",
    "ffn_contributions",
    "full_contributions",
    "load_model",
    "neuron_contributions",
]

"""llm-flow: information-flow routes inside transformer language models.

    import llm_flow
    model = llm_flow.load_model("smollm2-135m")
    run = model.run("The capital of France is")
    graph = llm_flow.build_graph(run, target=-1, threshold=0.04)
    # an encoder–decoder (Marian, T5, BART): a source, a target, a decoder position
    pair = llm_flow.load_model("Helsinki-NLP/opus-mt-en-de").run_pair("The cat sat.", "Die Katze saß.")
    graph = llm_flow.seq2seq_route(pair, target=2, threshold=0.04)
    llm_flow.explain(model, "The capital of France is")   # in a notebook: the Explorer's main view

The public names below are imported on first use, so that ``import llm_flow.cli`` (argument
parsing, ``--help``) does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
import os

# Numba's kernel and torch each run an OpenMP thread pool. With OpenMP's default wait policy,
# idle workers of one pool spin and starve the other: on 2 cores a forward pass after the
# contribution kernel ran 7x slower (28.4 s against 3.9 s for 211 tokens of SmolLM2; routes
# 19.4 s against 3.7 s). Passive waiting costs nothing measurable. Must be set before either
# library starts its pool, which is why it lives here; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import TYPE_CHECKING

from llm_flow.errors import (
    ArgumentError,
    ConfigError,
    DatasetError,
    LlmFlowError,
    ModelLoadError,
    ModelNotFoundError,
    PromptError,
    UnsupportedModelError,
)

_LAZY = {
    "ModelInfo": "llm_flow.models",
    "Run": "llm_flow.models",
    "TransparentLlm": "llm_flow.models",
    "load_model": "llm_flow.models",
    "attention_contributions": "llm_flow.routes",
    "build_graph": "llm_flow.routes",
    "ffn_contributions": "llm_flow.routes",
    "full_contributions": "llm_flow.routes",
    "neuron_contributions": "llm_flow.routes",
    "seq2seq_route": "llm_flow.routes",
    "Route": "llm_flow.routes.route",
    "route": "llm_flow.routes.route",
    "Explanation": "llm_flow.notebook.explanation",
    "explain": "llm_flow.notebook.explanation",
}

if TYPE_CHECKING:
    from llm_flow.models import ModelInfo, Run, TransparentLlm, load_model
    from llm_flow.routes import (
        attention_contributions,
        build_graph,
        ffn_contributions,
        full_contributions,
        neuron_contributions,
        seq2seq_route,
    )
    from llm_flow.notebook.explanation import Explanation, explain
    from llm_flow.routes.route import Route, route


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llm_flow' has no attribute {name!r}")


__all__ = [
    "ArgumentError",
    "ConfigError",
    "DatasetError",
    "LlmFlowError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PromptError",
    "UnsupportedModelError",
    *_LAZY,
]

"""Routes over a dataset: which heads, FFN blocks and residuals matter across many prompts.

    from llm_flow.dataset import Settings, analyse_dataset, load_results
    summary = analyse_dataset("prompts.jsonl", "results/", "smollm2-135m", Settings(positions="last"))
    results = load_results("results/")        # the tables as pandas DataFrames, and the metadata

Engines: in-process (default) or Ray Data (``engine="ray"``, ``pip install "llm-flow[scale]"``).
What the statistics mean is in `llm_flow.dataset.reduce`; the folder layout in
`llm_flow.dataset.store`. Names are imported on first use, so that reading a prompt file or
checking settings (the CLI does both before anything slow) does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "POSITION_CLASSES": "reduce",
    "Component": "reduce",
    "graph_tallies": "reduce",
    "ModelSpec": "spec",
    "PromptItem": "prompts",
    "read_prompts": "prompts",
    "PromptResult": "analyse",
    "analyse_prompt": "analyse",
    "Settings": "settings",
    "Summary": "store",
    "analyse_dataset": "run",
    "DatasetResults": "results",
    "load_results": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llm_flow.dataset' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llm_flow.dataset.{_EXPORTS[name]}"), name)

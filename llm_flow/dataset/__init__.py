"""Routes over a dataset: which heads, FFN blocks and residuals matter across many prompts.

    from llm_flow.dataset import Settings, analyse_dataset, load_results
    summary = analyse_dataset("prompts.jsonl", "results/", "smollm2-135m", Settings(targets="last"))
    results = load_results("results/")        # tables as pandas DataFrames, plus the metadata

Engines: in-process (default) or Ray Data (``engine="ray"``, ``pip install "llm-flow[scale]"``).
What the statistics mean is in `llm_flow.dataset.reduce`; the folder layout in
`llm_flow.dataset.store`.
"""

from llm_flow.dataset.analyse import PromptResult, Settings, analyse_prompt
from llm_flow.dataset.prompts import PromptItem, read_prompts
from llm_flow.dataset.reduce import POSITION_CLASSES, Component, graph_tallies
from llm_flow.dataset.run import analyse_dataset
from llm_flow.dataset.spec import ModelSpec
from llm_flow.dataset.store import Summary

__all__ = [
    "POSITION_CLASSES",
    "Component",
    "ModelSpec",
    "PromptItem",
    "PromptResult",
    "Settings",
    "Summary",
    "analyse_dataset",
    "analyse_prompt",
    "graph_tallies",
    "read_prompts",
]

"""Faithfulness settings a user can get wrong, checked without torch (the CLI and the app refuse
a bad value before anything slow loads)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_flow.config import REPO_CONFIG
from llm_flow.errors import ArgumentError

METRICS = ("logit_diff", "probability")
#: The registry's names (`llm_flow.faithfulness.SCORERS`), here for checks that must not load torch.
SCORER_NAMES = ("alti", "eap", "eap-ig", "random")
#: How ALTI's top edges are chosen (`llm_flow.faithfulness.scorers.Alti`).
SELECTIONS = ("threshold", "flow", "contribution")
MODES = ("patching", "mean", "zero")
#: The reference prompts mean ablation uses unless told otherwise.
SAMPLE_REFERENCE = REPO_CONFIG.parent / "datasets" / "prose.jsonl"


@dataclass(frozen=True)
class AblationSpec:
    """How ablated edges are replaced. `counterfactual`: the prompt patching reads (same token
    count as the clean prompt); `reference`: a prompt file or a list of prompts for mean ablation
    (default: the sample prose in config/datasets/)."""

    mode: str = "patching"
    counterfactual: str | None = None
    reference: str | os.PathLike[str] | Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ArgumentError(f"ablation must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.mode == "patching" and (not isinstance(self.counterfactual, str) or not self.counterfactual.strip()):
            raise ArgumentError("patching needs a counterfactual prompt (the same length as the prompt, in tokens)")
        if self.mode != "patching" and self.counterfactual is not None:
            raise ArgumentError(f"a counterfactual prompt is for patching, not {self.mode} ablation")
        if self.mode != "mean" and self.reference is not None:
            raise ArgumentError(f"reference prompts are for mean ablation, not {self.mode}")

    def reference_prompts(self) -> list[str]:
        """The texts mean ablation averages over (a file is read and checked here)."""
        from llm_flow.dataset.prompts import read_prompts

        source = SAMPLE_REFERENCE if self.reference is None else self.reference
        if isinstance(source, (str, os.PathLike)) and not Path(source).suffix:
            raise ArgumentError(f"reference {source!r}: give a prompt file (.txt, .jsonl, .csv, .parquet) or a list of prompts")
        return [item.text for item in read_prompts(source)]

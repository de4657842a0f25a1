"""Occlusion: how much the explained function drops when a token's embedding is replaced by a
baseline, f(x) - f(x with token j occluded), by captum's FeatureAblation.

Each step costs one forward pass per occluded window (no gradients). At 1,000 tokens that is a
thousand full passes per target token; `window` occludes that many consecutive tokens at once
(each gets the window's score) and divides the cost by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from captum.attr import FeatureAblation

from llm_flow.attribution.base import (
    BASELINES,
    Method,
    MethodOutput,
    Problem,
    check_choice,
    check_flag,
    check_positive,
    stack_rows,
)


@dataclass(frozen=True)
class Occlusion(Method):
    """Replace `window` consecutive token embeddings by the baseline (default: the
    end-of-sequence token's embedding); score = output drop. The first position (the attention
    sink, see `Problem.baseline`) is left alone and scores 0 unless `keep_first` is off."""

    name: ClassVar[str] = "occlusion"
    label: ClassVar[str] = "Occlusion"
    summary: ClassVar[str] = (
        "How much the output drops when a token is replaced by the end-of-sequence token (one "
        "forward pass per token and step)."
    )

    window: int = 1
    baseline: str = "eos"
    keep_first: bool = True

    def __post_init__(self) -> None:
        check_positive("window", self.window, 1, 4096)
        check_choice("baseline", self.baseline, BASELINES)
        check_flag("keep_first", self.keep_first)

    def forward_passes(self, n_tokens: int) -> int:
        return 1 + -(-n_tokens // self.window)  # the input, then one pass per window

    def compute(self, problem: Problem) -> MethodOutput:
        rows = []
        sequence = problem.sequence
        for step in range(problem.n_steps):
            with problem.model.lock, torch.no_grad():
                embeds = problem.embeddings(sequence.context(step))  # [1, T, d]
                n_tokens = embeds.shape[1]
                groups = torch.arange(n_tokens, device=embeds.device) // self.window  # [T]
                mask = groups[None, :, None].expand_as(embeds)  # one feature per window of tokens
                attribution = FeatureAblation(problem.forward(sequence.target_token_id(step))).attribute(
                    embeds,
                    baselines=problem.baseline(self.baseline, embeds, self.keep_first),
                    feature_mask=mask,
                    perturbations_per_eval=problem.batch_size(n_tokens, gradients=False),
                )
            row = attribution[0, :, 0].float()
            if self.keep_first:
                row[problem.kept_position] = 0.0  # not occluded: only batched-pass rounding could make it non-zero
            rows.append(row)
            problem.report(step + 1)
        return MethodOutput(stack_rows(rows, problem.n_sources))

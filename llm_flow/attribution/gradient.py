"""Gradient methods, computed by captum on the input embeddings of the plain `transformers`
model (the route `Run` is gradient-free). One backward pass set per target step: step t sees the
prompt and the continuation before its target, so its gradients are its own.

Scores per source token: the gradient's L2 norm (saliency), or the attribution vector summed over
the embedding dimensions (input x gradient, integrated gradients, gradient SHAP), which keeps
their sign and, for integrated gradients, completeness: the scores add up to f(x) - f(baseline).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from captum.attr import GradientShap as CaptumGradientShap
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import Saliency as CaptumSaliency

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
from llm_flow.errors import ArgumentError


class _GradientMethod(Method):
    """Loops over the steps; a subclass says what captum computes for one of them."""

    uses_gradients: ClassVar[bool] = True

    def forward_passes(self, n_tokens: int) -> int:
        return 1

    def compute(self, problem: Problem) -> MethodOutput:
        rows: list[torch.Tensor] = []
        deltas: list[float] = []
        for step in range(problem.n_steps):
            sequence = problem.sequence
            # the lock per step, not per request: other sessions' passes can go in between
            with problem.model.lock, torch.enable_grad():
                embeds = problem.embeddings(sequence.context(step), gradients=True)  # [1, T, d]
                scores, delta = self._one_step(problem, problem.forward(sequence.target_token_id(step)), embeds)
            rows.append(scores)
            if delta is not None:
                deltas.append(delta)
            problem.report(step + 1)
        return MethodOutput(stack_rows(rows, problem.n_sources), deltas or None)

    @abstractmethod
    def _one_step(self, problem: Problem, forward, embeds: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        """Scores [T] for one step, and a convergence delta where the method has one."""


@dataclass(frozen=True)
class Saliency(_GradientMethod):
    """L2 norm of the gradient of the explained function with respect to each input embedding."""

    name: ClassVar[str] = "saliency"
    label: ClassVar[str] = "Saliency"
    summary: ClassVar[str] = "How strongly the output reacts to each input token: the size of its gradient."
    scale: ClassVar[str] = "norm"

    def _one_step(self, problem, forward, embeds):
        gradient = CaptumSaliency(forward).attribute(embeds, abs=False)  # [1, T, d]
        return gradient[0].float().norm(dim=-1), None


@dataclass(frozen=True)
class InputXGradient(_GradientMethod):
    """Embedding times gradient, summed over the embedding dimensions (signed)."""

    name: ClassVar[str] = "input_x_gradient"
    label: ClassVar[str] = "Input × gradient"
    summary: ClassVar[str] = (
        "Each token's embedding times the output's gradient: a signed, first-order share."
    )

    def _one_step(self, problem, forward, embeds):
        attribution = CaptumInputXGradient(forward).attribute(embeds)
        return attribution[0].float().sum(-1), None


@dataclass(frozen=True)
class IntegratedGradients(_GradientMethod):
    """Gradients integrated along the straight line from a baseline input to the real one
    (Sundararajan et al. 2017), captum's Gauss-Legendre rule with `n_steps` points. The scores of a
    step add up to f(x) - f(baseline) up to the reported convergence delta. Baselines: zero
    embeddings (default), the mean embedding of the vocabulary, or the end-of-sequence token's
    embedding, at every position but the first unless `keep_first` is off (see
    `Problem.baseline`: a moving first position makes the path pass through states the model
    never sees, and the delta shows it). Zero is the default because deleting the top-scored
    token of eight SmolLM2 prompts hurt the prediction more than deleting an average other token
    on all eight with it, on only three (mean) and two (EOS) with the others (README, Input
    attribution). `internal_batch_size` (default: what fits the memory budget at this length)
    bounds how many interpolation points go through the model at once."""

    name: ClassVar[str] = "integrated_gradients"
    label: ClassVar[str] = "Integrated gradients"
    summary: ClassVar[str] = (
        "Gradients averaged on the way from a neutral input to the real one; a step's scores add "
        "up to the change in the output (the IG delta says how exactly)."
    )

    n_steps: int = 32
    baseline: str = "zeros"
    keep_first: bool = True
    internal_batch_size: int | None = None

    def forward_passes(self, n_tokens: int) -> int:
        return self.n_steps + 2  # the points, then f(input) and f(baseline) for the delta

    def __post_init__(self) -> None:
        check_positive("n_steps", self.n_steps, 2, 1024)
        check_choice("baseline", self.baseline, BASELINES)
        check_flag("keep_first", self.keep_first)
        if self.internal_batch_size is not None:
            check_positive("internal_batch_size", self.internal_batch_size)

    def _one_step(self, problem, forward, embeds):
        batch = self.internal_batch_size or problem.batch_size(embeds.shape[1], gradients=True)
        attribution, delta = CaptumIntegratedGradients(forward).attribute(
            embeds,
            baselines=problem.baseline(self.baseline, embeds, self.keep_first),
            n_steps=self.n_steps,
            internal_batch_size=min(batch, self.n_steps),
            return_convergence_delta=True,
        )
        return attribution[0].float().sum(-1), float(delta.sum())


@dataclass(frozen=True)
class GradientShap(_GradientMethod):
    """Expected gradients (captum's GradientShap): input minus baseline times the gradient at a
    random point between them, averaged over `n_samples` draws whose baselines are sequences of
    random vocabulary tokens (`n_baselines` of them, fixed by `seed`; the first position kept
    unless `keep_first` is off), plus Gaussian noise of `stdevs` on the input. Samples go
    through the model in batches that fit the memory budget."""

    name: ClassVar[str] = "gradient_shap"
    label: ClassVar[str] = "Gradient SHAP"
    summary: ClassVar[str] = (
        "Input-times-gradient averaged over random points between the input and random-token "
        "baselines."
    )

    n_samples: int = 8
    n_baselines: int = 8
    stdevs: float = 0.0
    keep_first: bool = True
    seed: int = 0

    def forward_passes(self, n_tokens: int) -> int:
        return self.n_samples

    def __post_init__(self) -> None:
        check_positive("n_samples", self.n_samples, 1, 1024)
        check_positive("n_baselines", self.n_baselines, 1, 1024)
        check_flag("keep_first", self.keep_first)
        if isinstance(self.stdevs, bool) or not isinstance(self.stdevs, (int, float)) or not self.stdevs >= 0:
            raise ArgumentError(f"stdevs must be a number >= 0 (got {self.stdevs!r})")

    def _one_step(self, problem, forward, embeds):
        n_tokens = embeds.shape[1]
        generator = torch.Generator().manual_seed(self.seed)
        vocab = problem.model.hf_model.get_input_embeddings().weight.shape[0]
        random_ids = torch.randint(vocab, (self.n_baselines, n_tokens), generator=generator)
        table = problem.model.hf_model.get_input_embeddings()
        with torch.no_grad():
            baselines = table(random_ids.to(embeds.device))  # [n_baselines, T, d]
        if self.keep_first:
            baselines[:, 0] = embeds[0, 0].detach()
        batch = problem.batch_size(n_tokens, gradients=True)
        total = torch.zeros(n_tokens)
        # captum draws a baseline and a point per sample; chunks of samples bound the batch, and
        # the mean of the chunk means (weighted by size) is the mean over all samples
        with _seeded(self.seed, embeds.device):
            for start in range(0, self.n_samples, batch):
                chunk = min(batch, self.n_samples - start)
                attribution = CaptumGradientShap(forward).attribute(
                    embeds, baselines=baselines, n_samples=chunk, stdevs=float(self.stdevs)
                )
                total += attribution[0].float().sum(-1).cpu() * chunk
        return total / self.n_samples, None


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """captum draws GradientShap's baselines and points from numpy's and torch's global
    generators: seed both for a reproducible result, then give them back their state."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)

"""What every attribution method receives and returns, and the pieces the methods share: the
function of the model output being explained, input embeddings and baselines, batch sizes that
keep long prompts within memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch

from llm_flow.attribution.targets import Sequence
from llm_flow.validation import check_choice, check_flag, check_positive  # noqa: F401  (the methods' checks)
from llm_flow.errors import ArgumentError
from llm_flow.models.base import TransparentLlm

#: What a target step's score can be a function of: the target token's probability or its logit.
FUNCTIONS = ("probability", "logit")
#: Input baselines for integrated gradients and occlusion ("mask": the mask token's embedding, what
#: an encoder was trained to fill in; "eos": the end-of-sequence token's).
BASELINES = ("zeros", "mean", "eos", "mask")
#: Activation memory one batched pass may use (bytes). At 1,000 tokens on SmolLM2-135M one
#: gradient sample needs ~3 GB, so batches shrink to a single sample there.
MEMORY_BUDGET = 2 << 30

Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class Problem:
    """One attribution request: the model, the token sequence, and what is explained per step."""

    model: TransparentLlm
    sequence: Sequence
    function: str | None  # "probability" | "logit"; None for methods that read no output
    foil: int | None  # contrastive foil token id: explain f(target token) - f(foil)
    progress: Progress | None = None

    @property
    def n_steps(self) -> int:
        return self.sequence.n_steps

    @property
    def n_sources(self) -> int:
        """Columns: every token some step can see (all but the last)."""
        return len(self.sequence.ids) - 1

    @property
    def device(self) -> torch.device:
        return next(self.model.hf_model.parameters()).device

    @property
    def kept_position(self) -> int:
        """The position `baseline` leaves alone with ``keep_first`` (an encoder–decoder keeps
        its decoder start instead)."""
        return 0

    def report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.n_steps)

    def embeddings(self, ids: list[int], gradients: bool = False) -> torch.Tensor:
        """Input embeddings of `ids`, a leaf of their own: [1, T, d] in the model's dtype."""
        table = self.model.hf_model.get_input_embeddings()
        with torch.no_grad():
            embeds = table(torch.tensor([ids], device=self.device))
        return embeds.detach().requires_grad_(gradients)

    def baseline(self, kind: str, embeds: torch.Tensor, keep_first: bool) -> torch.Tensor:
        """The reference input the attribution is measured against: [1, T, d].

        `keep_first` leaves position 0 as it is. The first position (BOS, or the first token of
        a model without one) is the attention sink of decoder LMs: its state shapes every
        attention pattern, and moving it off its embedding goes through states the model never
        sees. On SmolLM2, "The capital of France is" -> " Paris", integrated gradients of the
        target logit at 64 points miss completeness by 41 (zero baseline) and 14 (mean
        embedding) when position 0 moves with the rest, by 0.12 and 0.003 when it is kept (the
        logit along the path jumps between -2 and 19 in the first case, rises smoothly in the
        last). A kept position scores 0."""
        table = self.model.hf_model.get_input_embeddings().weight.detach()
        if kind == "zeros":
            baseline = torch.zeros_like(embeds)
        elif kind == "mean":
            baseline = table.mean(0).expand_as(embeds).clone()
        else:
            tokenizer = self.model.tokenizer
            token = _token_of(tokenizer, kind)
            if token is None:
                what = "end-of-sequence" if kind == "eos" else "mask"
                others = ["zeros", "mean"] + [k for k in ("eos", "mask") if k != kind and _token_of(tokenizer, k) is not None]
                raise ArgumentError(
                    f"{self.model.name} has no {what} token: use baseline {' or '.join(repr(k) for k in others)}"
                )
            baseline = table[token].expand_as(embeds).clone()
        if keep_first:
            baseline[:, 0] = embeds[:, 0].detach()
        return baseline

    def forward(self, target_token_id: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The explained function of input embeddings [B, T, d] -> [B] (float32) for the step
        whose target token is `target_token_id`."""
        hf, function, foil = self.model.hf_model, self.function, self.foil
        position = self.sequence.position
        if position is not None:  # an encoder: the prediction at its mask, every token visible
            from llm_flow.attribution.masked import masked_logits

            ids = self.sequence.context(0)

            def explained(embeds: torch.Tensor) -> torch.Tensor:
                return output_function(masked_logits(self.model, ids, embeds, position), target_token_id, foil, function)

            return explained

        def explained(embeds: torch.Tensor) -> torch.Tensor:
            logits = hf(inputs_embeds=embeds, logits_to_keep=1, use_cache=False).logits[:, -1].float()
            return output_function(logits, target_token_id, foil, function)

        return explained

    def batch_size(self, n_tokens: int, gradients: bool) -> int:
        """Samples per pass that fit `MEMORY_BUDGET` at this length (at least 1).

        With gradients every layer keeps its activations for the backward pass (attention
        probabilities dominate: layers x heads x T^2); without, one layer is live at a time."""
        info = self.model.info
        size = self.model.hf_model.get_input_embeddings().weight.element_size()
        per_layer = 3 * info.n_heads * n_tokens + 10 * info.d_model + 4 * info.d_mlp
        per_sample = n_tokens * per_layer * size * (info.n_layers if gradients else 1)
        return max(1, MEMORY_BUDGET // per_sample)


def _token_of(tokenizer, kind: str) -> int | None:
    return tokenizer.eos_token_id if kind == "eos" else getattr(tokenizer, "mask_token_id", None)


def output_function(logits: torch.Tensor, target_token_id: int, foil: int | None, function: str) -> torch.Tensor:
    """``f(target token)`` or, contrastively, ``f(target token) - f(foil)``, with f the probability
    or the logit: logits [B, V] -> [B]. `foil` is a token id too."""
    values = logits.softmax(-1) if function == "probability" else logits
    out = values[:, target_token_id]
    return out if foil is None else out - values[:, foil]


@dataclass(frozen=True)
class MethodOutput:
    scores: np.ndarray  # [n_steps, n_sources]; NaN where a step cannot see the source
    deltas: list[float] | None = None  # integrated gradients' convergence delta per step


class Method(ABC):
    """One attribution method. Subclasses are frozen dataclasses whose fields are its options."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]  # one sentence for the app and the CLI
    #: True for methods that explain a function of the output (gradients, perturbation);
    #: False for methods that read the forward pass only (attention, ALTI).
    uses_output: ClassVar[bool] = True
    #: "sum": signed scores that add up (to f(x) - f(baseline) for IG); "norm": magnitudes;
    #: "share": non-negative weights that sum to 1 per step.
    scale: ClassVar[str] = "sum"

    #: True for methods that run backward passes (each costs about two forward passes).
    uses_gradients: ClassVar[bool] = False

    @abstractmethod
    def compute(self, problem: Problem) -> MethodOutput:
        """Scores for every step of `problem`."""

    def forward_passes(self, n_tokens: int) -> int:
        """Forward passes over a context of `n_tokens` that one step costs (as samples: a
        batch of 8 counts 8). 0 for methods that read the route Run."""
        return 0

    def passes(self, sequence: Sequence) -> int:
        """Forward passes over the whole request (each step over its own context)."""
        return sum(self.forward_passes(n) for n in _context_lengths(sequence))

    def work(self, sequence: Sequence) -> int:
        """The whole request in token passes, a backward pass counted as two forward ones: what
        the app weighs before it starts something that takes minutes."""
        per_pass = 3 if self.uses_gradients else 1
        return sum(self.forward_passes(n) * n * per_pass for n in _context_lengths(sequence))

    @classmethod
    def options(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def settings(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.options()}


def _context_lengths(sequence: Sequence) -> range:
    """Tokens each step sees: the prompt, then one more per target before it."""
    return range(sequence.n_prompt, len(sequence.ids))


def stack_rows(rows: list[torch.Tensor], n_sources: int) -> np.ndarray:
    """Per-step scores of growing length -> [n_steps, n_sources], NaN where not visible."""
    out = np.full((len(rows), n_sources), np.nan)
    for step, row in enumerate(rows):
        out[step, : row.shape[0]] = row.detach().double().cpu().numpy()
    return out

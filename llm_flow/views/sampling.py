"""The next-token sampling pipeline, every stage kept: logits → ÷ temperature → top-k → top-p → softmax.

The numbers are those of `transformers`' sampling (``generate(do_sample=True)``): its own
warpers (``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``) in its order,
skipped when ``generate`` skips them (temperature 1, ``top_k`` 0, ``top_p`` 1.0), hence its tie
rules (top-k keeps every token tied with the k-th; top-p sorts ascending and cuts the tail whose
cumulative probability is ``<= 1 - top_p``), at least one token always kept, float32
throughout. Temperature 0 means greedy decoding, which in `transformers` is ``do_sample=False``:
the argmax of the raw logits, no warper applied.
Keeping every stage lets a page grey out exactly the tokens each filter removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llm_flow.validation import check_sampling, check_seed
from llm_flow.display import Displayable
from llm_flow.errors import ArgumentError

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

#: Tokens any filter must keep (transformers uses 1 outside beam search).
MIN_TOKENS_TO_KEEP = 1


@dataclass(frozen=True)
class SamplingSettings:
    """What the sliders set. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` are off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        """The settings in words, for titles and the CLI."""
        if self.greedy:
            return "greedy (temperature 0: always the most likely token)"
        top_k = f"top-k {self.top_k}" if self.top_k else "top-k off"
        top_p = f"top-p {self.top_p:g}" if self.top_p < 1 else "top-p off"
        return f"temperature {self.temperature:g}, {top_k}, {top_p}"


@dataclass(frozen=True, eq=False)
class SamplingStages(Displayable):
    """One position's next-token distribution at every stage of the pipeline (all [vocab], float32).

    A filtered stage holds ``-inf`` for the tokens cut so far. ``cut_by_top_k`` / ``cut_by_top_p``
    mark the tokens that filter removed (top-p's mask leaves out what top-k already cut);
    ``cut_by_greedy`` marks everything but the argmax at temperature 0. `decode_tokens` (the
    model's) names the tokens in notebook displays; without it they are shown by id.
    """

    settings: SamplingSettings
    logits: torch.Tensor  # [V] the model's raw logits
    scaled: torch.Tensor  # [V] logits / temperature (the raw logits when greedy)
    after_top_k: torch.Tensor  # [V]
    after_top_p: torch.Tensor  # [V]
    probs: torch.Tensor  # [V] softmax of after_top_p; one-hot on the argmax when greedy
    cut_by_greedy: torch.Tensor  # [V] bool
    cut_by_top_k: torch.Tensor  # [V] bool
    cut_by_top_p: torch.Tensor  # [V] bool
    decode_tokens: Callable[[list[int]], list[str]] | None = field(default=None, repr=False)

    @property
    def kept(self) -> torch.Tensor:
        """[V] bool: the tokens that can still be drawn."""
        return ~(self.cut_by_greedy | self.cut_by_top_k | self.cut_by_top_p)

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def model_probs(self) -> torch.Tensor:
        """[V] softmax of the raw logits: the model's own distribution, before any setting."""
        return torch.softmax(self.logits, -1)

    # --- notebook display (llm_flow.display) --------------------------------------------------

    def _names(self, ids: list[int]) -> list[str]:
        return self.decode_tokens(ids) if self.decode_tokens is not None else [f"#{i}" for i in ids]

    def summary(self) -> dict[str, object]:
        return {
            "settings": self.settings.describe(),
            "tokens that can be drawn": f"{self.n_kept:,} of {self.logits.shape[-1]:,}",
            "most likely": self.to_frame().head(10),
        }

    def figure(self, n: int = 15, chosen: int | None = None) -> "go.Figure":
        """The four stages over the `n` most likely tokens (`chosen` outlined)."""
        from llm_flow.figures.playground import sampling_figure

        return sampling_figure(self, self._names, n, chosen)

    def to_frame(self) -> "pd.DataFrame":
        """Every token of the vocabulary, highest logit first: logit, the model's probability,
        the probability it is drawn with, and the filter that cut it (empty when kept)."""
        import pandas as pd

        order = torch.argsort(self.logits, descending=True, stable=True)
        ids = order.tolist()
        cut = torch.full_like(self.logits, 0, dtype=torch.long)
        for code, mask in ((1, self.cut_by_greedy), (2, self.cut_by_top_k), (3, self.cut_by_top_p)):
            cut[mask] = code
        names = np.array(["", "greedy", "top-k", "top-p"], dtype=object)
        return pd.DataFrame({
            "token_id": ids,
            "token": self._names(ids),
            "logit": self.logits[order].numpy(),
            "model_probability": self.model_probs[order].numpy(),
            "probability": self.probs[order].numpy(),
            "cut_by": names[cut[order].numpy()],
        })  # fmt: skip


def sampling_stages(
    logits: torch.Tensor,
    settings: SamplingSettings,
    decode_tokens: Callable[[list[int]], list[str]] | None = None,
) -> SamplingStages:
    """Run one position's logits [vocab] through the pipeline, keeping every stage
    (`decode_tokens`, e.g. ``model.decode_tokens``, only names tokens in notebook displays).

    Each stage is `transformers`' own warper, added under the condition ``generate`` adds it, so
    a release that changes a rule changes the page as it changes ``generate``."""
    if logits.dim() != 1:
        raise ArgumentError(f"expected the logits of one position, shape [vocab] (got {tuple(logits.shape)})")
    raw = logits.detach().float()[None]  # [1, V]: the batch shape the warpers work on
    none = torch.zeros_like(raw, dtype=torch.bool)
    if settings.greedy:
        best = torch.argmax(raw, -1, keepdim=True)  # [1, 1]; the first index among ties, as generate
        cut = torch.ones_like(none).scatter_(-1, best, False)
        probs = torch.zeros_like(raw).scatter_(-1, best, 1.0)
        return SamplingStages(settings, raw[0], raw[0], raw[0], raw[0], probs[0], cut[0], none[0], none[0], decode_tokens)
    no_ids = torch.zeros((1, 0), dtype=torch.long, device=raw.device)  # the warpers do not read them
    scaled = raw
    if settings.temperature != 1.0:
        scaled = TemperatureLogitsWarper(settings.temperature)(no_ids, raw)
    after_k = scaled
    if settings.top_k != 0:
        after_k = TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=MIN_TOKENS_TO_KEEP)(no_ids, scaled)
    after_p = after_k
    if settings.top_p < 1.0:
        after_p = TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=MIN_TOKENS_TO_KEEP)(no_ids, after_k)
    cut_k = _newly_cut(scaled, after_k)
    cut_p = _newly_cut(after_k, after_p)
    probs = torch.softmax(after_p, -1)
    return SamplingStages(
        settings, raw[0], scaled[0], after_k[0], after_p[0], probs[0], none[0], cut_k[0], cut_p[0], decode_tokens
    )


def _newly_cut(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The tokens a warper set to -inf that were not -inf before it."""
    return (after == -math.inf) & (before != -math.inf)


def seeded_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A random source for sampling on the logits' device; ``seed=None`` draws a fresh seed."""
    generator = torch.Generator(device=device)
    if check_seed(seed) is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def choose(stages: SamplingStages, generator: torch.Generator | None = None) -> int:
    """The next token: the argmax when greedy, else one draw from the final distribution.

    With a generator seeded like ``torch.manual_seed(s)``, the draws are those ``generate`` makes
    after ``torch.manual_seed(s)`` (one ``multinomial`` per token)."""
    if stages.settings.greedy:
        return int(torch.argmax(stages.logits))
    return int(torch.multinomial(stages.probs[None], num_samples=1, generator=generator)[0, 0])

"""Which output tokens a block, a head or a neuron pushes up (promotes) or down (suppresses)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_flow.models.base import TransparentLlm
from llm_flow.models.run import Run
from llm_flow.routes.contributions import attention_parts, ffn_parts
from llm_flow.views.logit_lens import previous_state, residual_state
from llm_flow.views.tokens import TokenScore, top_tokens


@dataclass(frozen=True)
class Promotion:
    promoted: list[TokenScore]  # highest projection first
    suppressed: list[TokenScore]  # most negative projection first


def promoted_tokens(model: TransparentLlm, vector: torch.Tensor, k: int = 10) -> Promotion:
    """Project an update vector on the unembedding and take both ends."""
    scores = model.vocab_projection(vector)
    return Promotion(top_tokens(model, scores, k), top_tokens(model, scores, k, largest=False))


def block_update(run: Run, kind: str, layer: int, position: int) -> torch.Tensor | None:
    """What the block just before a residual node added to the residual stream: the attention
    output for ``A{l}``, the FFN output for ``I{l}`` (the whole layer's update for parallel
    blocks), nothing for an embedding."""
    previous = previous_state(run, kind, layer)
    if previous is None:
        return None
    return residual_state(run, kind, layer, position) - residual_state(run, *previous, position)


def head_output(run: Run, layer: int, position: int, head: int) -> torch.Tensor:
    """Head `head`'s output at `position` (its value vectors weighted by attention, through W_O)."""
    return attention_parts(run, layer, position).pieces[:, run.check_head(head)].sum(0)


def neuron_output(run: Run, layer: int, position: int, neuron: int) -> torch.Tensor:
    """``act[position, neuron] * W_out[neuron]``, what one FFN neuron wrote at `position`."""
    return ffn_parts(run, layer, position).pieces[run.check_neuron(neuron)]

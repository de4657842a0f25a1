"""The logit lens: what a residual state would predict if the model stopped there."""

from __future__ import annotations

from dataclasses import replace

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run
from llm_flow.views.tokens import TokenScore, ranks, top_tokens


def residual_state(run: Run, kind: str, layer: int, position: int) -> torch.Tensor:
    """The residual vector of a graph node: ``X`` (embedding), ``A{l}`` (after attention),
    ``I{l}`` (after the layer): [d_model]."""
    position = run.position(position)
    if kind == "X":
        return run.layers[0].resid_pre[position]
    act = run.layer(layer)
    if kind == "A" and act.resid_mid is not None:
        return act.resid_mid[position]
    if kind == "I":
        return act.resid_post[position]
    choices = "X or I" if run.parallel else "X, A or I"
    raise ArgumentError(f"node kind {kind!r} of layer {layer} has no residual state: use {choices}")


def previous_state(run: Run, kind: str, layer: int) -> tuple[str, int] | None:
    """The residual node just before the block that produced this one (None for embeddings)."""
    if kind == "X":
        return None
    if kind == "I" and not run.parallel:
        return ("A", layer)
    return ("X", -1) if layer == 0 else ("I", layer - 1)


def logit_lens(
    run: Run, kind: str, layer: int, position: int, k: int = 10, normalize: bool = True
) -> list[TokenScore]:
    """Top-`k` tokens of a residual node through the (optional) final norm and the unembedding,
    with each token's rank change against the residual state before the block."""
    logits = run.model.unembed(residual_state(run, kind, layer, position), normalize=normalize)
    probs = torch.softmax(logits, -1)
    top = top_tokens(run.model, logits, k)
    ids = [t.token_id for t in top]
    previous = previous_state(run, kind, layer)
    changes: list[int | None] = [None] * len(top)
    if previous is not None:
        before = run.model.unembed(residual_state(run, *previous, position), normalize=normalize)
        changes = [b - a for a, b in zip(ranks(logits, ids), ranks(before, ids))]
    return [replace(t, probability=float(probs[t.token_id]), rank_change=c) for t, c in zip(top, changes)]

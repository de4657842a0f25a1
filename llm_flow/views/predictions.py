"""The model's next-token predictions at a position."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run


@dataclass(frozen=True)
class Prediction:
    token: str
    token_id: int
    probability: float
    logit: float


def top_predictions(run: Run, position: int = -1, k: int = 10, temperature: float = 1.0) -> list[Prediction]:
    """The `k` most likely next tokens after `position`, with softmax(logits / temperature)."""
    if not temperature > 0:
        raise ArgumentError(f"temperature must be positive (got {temperature})")
    if k < 1:
        raise ArgumentError(f"k must be at least 1 (got {k})")
    logits = run.logits[run.position(position)].float()
    probs = torch.softmax(logits / temperature, dim=-1)
    top = torch.topk(probs, min(k, probs.shape[-1]))
    ids = top.indices.tolist()
    return [
        Prediction(token, token_id, float(p), float(logits[token_id]))
        for token, token_id, p in zip(run.model.decode_tokens(ids), ids, top.values.tolist())
    ]

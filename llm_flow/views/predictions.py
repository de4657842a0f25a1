"""The model's next-token predictions at a position."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
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


_ROWS_AT_ONCE = 256  # positions whose softmax over the vocabulary is held at once


def prediction_table(run: Run) -> pd.DataFrame:
    """One row per position: its token, the model's top next token and probability, and the
    probability and rank of the token that actually follows (empty at the last position)."""
    rows = []
    for start in range(0, run.n_tokens, _ROWS_AT_ONCE):
        probs = torch.softmax(run.logits[start : start + _ROWS_AT_ONCE].float(), dim=-1)  # [r, V]
        top = probs.max(-1)
        for k, position in enumerate(range(start, start + probs.shape[0])):
            follows = int(run.tokens[position + 1]) if position + 1 < run.n_tokens else None
            p = float(probs[k, follows]) if follows is not None else None
            rows.append({
                "position": position,
                "token": run.str_tokens[position],
                "token_id": int(run.tokens[position]),
                "top_token_id": int(top.indices[k]),
                "top_probability": float(top.values[k]),
                "next_token_id": follows,
                "next_probability": p,
                "next_rank": int((probs[k] > p).sum()) if p is not None else None,
            })  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.insert(3, "top_token", run.model.decode_tokens(frame["top_token_id"].tolist()))
    for column in ("next_token_id", "next_rank"):
        frame[column] = frame[column].astype("Int64")
    return frame

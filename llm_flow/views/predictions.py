"""The model's predictions at a position: the next token (decoders) or the token itself (an
encoder's [MASK])."""

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
    """The `k` most likely tokens predicted at `position` (the next token in a decoder, the token
    itself in an encoder), with softmax(logits / temperature)."""
    if not temperature > 0:
        raise ArgumentError(f"temperature must be positive (got {temperature})")
    if k < 1:
        raise ArgumentError(f"k must be at least 1 (got {k})")
    logits = run.position_logits(position)
    probs = torch.softmax(logits / temperature, dim=-1)
    top = torch.topk(probs, min(k, probs.shape[-1]))
    ids = top.indices.tolist()
    return [
        Prediction(token, token_id, float(p), float(logits[token_id]))
        for token, token_id, p in zip(run.model.decode_tokens(ids), ids, top.values.tolist())
    ]


def default_target(run: Run) -> int:
    """The token a route explains unless told otherwise: in an encoder's prompt the first
    ``[MASK]`` (what a masked-LM head predicts), else the last token (what comes next)."""
    mask = getattr(run.model.tokenizer, "mask_token_id", None)
    if run.model.info.bidirectional and mask is not None:
        hits = torch.nonzero(run.tokens == mask).flatten()
        if len(hits):
            return int(hits[0])
    return run.n_tokens - 1


def prediction_title(run: Run, token: str) -> str:
    """The heading of the predictions at a token shown as `token`."""
    if run.model.info.bidirectional:
        return f"Predicted at {token!r}"
    return f"Next token after {token!r}"


def head_note(run: Run) -> str | None:
    """What a reader must know about where the predictions come from, when it is not obvious."""
    if run.model.info.no_lm_head:
        return (
            "This checkpoint has no masked-LM head: predictions, the logit lens and promoted tokens "
            "use its input embeddings as the unembedding."
        )
    return None


_ROWS_AT_ONCE = 256  # positions whose softmax over the vocabulary is held at once


def prediction_table(run: Run) -> pd.DataFrame:
    """One row per position: its token, the model's top next token and probability, and the
    probability and rank of the token that actually follows (empty at the last position)."""
    rows = []
    for start in range(0, run.n_tokens, _ROWS_AT_ONCE):
        probs = torch.softmax(run.rows_logits(range(start, min(start + _ROWS_AT_ONCE, run.n_tokens))), dim=-1)  # [r, V]
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
                "next_rank": int((probs[k] > p).sum()) + 1 if p is not None else None,  # from 1, as everywhere
            })  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.insert(3, "top_token", run.model.decode_tokens(frame["top_token_id"].tolist()))
    for column in ("next_token_id", "next_rank"):
        frame[column] = frame[column].astype("Int64")
    return frame

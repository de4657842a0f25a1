"""Scored vocabulary tokens: the common currency of the logit lens and of promoted tokens."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.base import TransparentLlm
from llm_flow.wording import plural


@dataclass(frozen=True)
class TokenScore:
    token: str
    token_id: int
    score: float  # a logit (lens) or a projection on the unembedding (promoted/suppressed)
    probability: float | None = None  # lens only: softmax over the vocabulary
    rank_change: int | None = None  # lens only: rank before the block minus rank after (> 0: moved up)


def top_tokens(model: TransparentLlm, scores: torch.Tensor, k: int, largest: bool = True) -> list[TokenScore]:
    """The `k` highest (or lowest) scoring tokens of a [vocab] score vector."""
    check_count(k)
    top = torch.topk(scores.float(), min(k, scores.shape[-1]), largest=largest)
    ids = top.indices.tolist()
    return [
        TokenScore(token, token_id, float(score))
        for token, token_id, score in zip(model.decode_tokens(ids), ids, top.values.tolist())
    ]


def check_count(k: int) -> int:
    """How many items a ranking should list: at least one."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ArgumentError(f"k, the number of items to list, must be a whole number of at least 1 (got {k!r})")
    return k


def ranks(scores: torch.Tensor, token_ids: list[int]) -> list[int]:
    """Rank of each token in a [vocab] score vector, counted from 1 (the highest score) as
    everywhere in llm-flow: pages, commands and CSV columns. Ties share the better rank."""
    chosen = scores[token_ids]  # [k]
    return ((scores[None, :] > chosen[:, None]).sum(-1) + 1).tolist()


def display_token(token: str) -> str:
    """A token made readable as a label: visible spaces at the ends, escaped line breaks, other
    control characters as \\xNN (byte-level vocabularies have them; a browser drawing a figure's
    SVG refuses them)."""
    core = token.strip(" ")
    lead, trail = len(token) - len(token.lstrip(" ")), len(token) - len(token.rstrip(" "))
    if not core:
        return "·" * len(token) if token else "∅"
    core = core.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    core = "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in core)
    return "·" * lead + core + "·" * trail


def single_token(model: TransparentLlm, text: str, role: str = "foil") -> int:
    """The id of `text` when it is exactly one token (``" London"``, with its leading space): a
    contrastive foil, or the answer a faithfulness check reads (`role` names it in errors)."""
    if not isinstance(text, str) or not text:
        raise ArgumentError(f"the {role} is empty: give one token, e.g. ' London'")
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = ", ".join(repr(t) for t in model.decode_tokens(ids))
        raise ArgumentError(
            f"the {role} {text!r} is {plural(len(ids), 'token')} ({pieces}); give a single token "
            "(mind the leading space: ' London' is not 'London')"
        )
    return int(ids[0])

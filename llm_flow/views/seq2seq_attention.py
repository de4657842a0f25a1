"""BertViz's three attentions of an encoder–decoder from a `Seq2SeqRun`: the encoder's
self-attention (source x source), the decoder's (target x target, causal) and the
cross-attention (rows the decoder's tokens, columns the source tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_flow.errors import ArgumentError
from llm_flow.models.seq2seq_run import STACKS, Seq2SeqRun
from llm_flow.validation import check_weighting
from llm_flow.views.attention import AttentionView, attention_view_of

STACK_NAMES = {"encoder": "Encoder", "decoder": "Decoder", "cross": "Cross"}


def seq2seq_views(
    run: Seq2SeqRun,
    stacks: Sequence[str] = STACKS,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    top_k: int | None = None,
    aggregate: str | None = None,
    weighting: str = "attention",
) -> list[tuple[str, AttentionView]]:
    """(tab name, view) per chosen stack, each over all its tokens. `layers` (default all) must
    exist in every chosen stack: the encoder and the decoder may have different depths."""
    check_weighting(weighting)
    if weighting != "attention":
        raise ArgumentError(
            f"the {weighting!r} weighting is not available for encoder–decoders yet: use the attention weights"
        )
    if not stacks or any(stack not in STACKS for stack in stacks):
        raise ArgumentError(f"choose attentions among {', '.join(STACKS)} (got {list(stacks)})")
    views = []
    for stack in stacks:
        n_layers = run.n_layers_of(stack)
        queries, sources = run.tokens_of(stack)
        chosen = list(range(n_layers)) if layers is None else list(layers)
        bad = [l for l in chosen if not (isinstance(l, (int, np.integer)) and 0 <= l < n_layers)]
        if bad or not chosen:
            raise ArgumentError(f"the {stack} has layers 0..{n_layers - 1} (got {chosen})")
        view = attention_view_of(
            run.patterns(stack, chosen), queries, layers=chosen, heads=heads, top_k=top_k, aggregate=aggregate,
            source_tokens=sources if stack == "cross" else None,
        )  # fmt: skip
        views.append((STACK_NAMES[stack], view))
    return views

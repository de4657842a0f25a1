"""Per-head views of an attention edge: who carried it, where each head looked, what it moved."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run
from llm_flow.routes.contributions import contribution_rows

_BLOCK_ELEMENTS = 1 << 24  # [rows, heads, sources] weights computed at once


@dataclass(frozen=True)
class HeadShare:
    head: int
    contribution: float  # share of the destination representation carried by this head


def edge_heads(run: Run, layer: int, source: int, position: int) -> list[HeadShare]:
    """Heads ranked by their contribution of token `source` to `position` in `layer`."""
    position = run.position(position)
    last = int(run.layer(layer).pattern.source_counts(torch.tensor([position]))[0]) - 1
    if not 0 <= source <= last:
        raise ArgumentError(
            f"source {source} is out of range: attention at position {position} reads sources 0..{last}"
        )
    row = contribution_rows(run, layer, [position])[0]
    shares = [HeadShare(h, float(c)) for h, c in enumerate(row.heads[source].tolist())]
    return sorted(shares, key=lambda s: -s.contribution)


def attention_map(run: Run, layer: int, head: int) -> torch.Tensor:
    """Attention weights of one head, queries x sources: [T, T]. Rows are rebuilt (or read) a
    block at a time, so the layer's [H, T, T] is never whole."""
    head = run.check_head(head)
    pattern = run.layer(layer).pattern
    out = torch.zeros(run.n_tokens, run.n_tokens)
    block = max(1, _BLOCK_ELEMENTS // (pattern.n_heads * run.n_tokens))
    for start in range(0, run.n_tokens, block):
        stop = min(start + block, run.n_tokens)
        out[start:stop] = pattern.rows(torch.arange(start, stop), run.n_tokens)[:, head].float().cpu()
    return out


def contribution_map(run: Run, layer: int, head: int) -> torch.Tensor:
    """Contributions of one head, queries x sources: [T, T]. All rows are remembered by the Run,
    so other heads of the same layer are then free."""
    run.check_head(head)
    rows = contribution_rows(run, layer, list(range(run.n_tokens)))
    out = torch.zeros(run.n_tokens, run.n_tokens)
    for row in rows:
        out[row.position, : row.heads.shape[0]] = row.heads[:, head]
    return out

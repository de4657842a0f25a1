"""Attention weights rebuilt on demand from the queries and keys a Run keeps.

A layer's attention pattern is [heads, T, T]: 145 GiB over SmolLM2's 30 layers at 16k tokens.
Its queries and keys (after the rotary embedding, one key head per group under grouped-query
attention) are [T, H, d_head] and [T, n_kv, d_head], and together with the layer's own scale,
mask, soft-capping and sliding window they give any row of the pattern exactly, by the formula
the model's eager attention uses. `QueryKeyPattern` keeps those and answers the questions
`CausalPattern` answers (one row, several rows, a block, the dense pattern) by recomputing just
what is asked; the forward pass itself then runs on the model's fast attention (SDPA).

Encoder–decoders keep the same: their encoder's self-attention is one more mask (none), their
cross-attention has keys of another sequence (the source: `n_sources` differs from `n_tokens`),
and T5 adds a relative position bias to the scores, kept by distance (`RelativeBias`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: Elements of [rows, heads, sources] scores computed at once when a whole layer is attended.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class AttentionRule:
    """What turns one layer's query·key products into its attention weights."""

    scaling: float  # the model's own factor on q·k (1/sqrt(d_head), or Gemma's query_pre_attn_scalar)
    causal: bool = True  # False for encoders: every query sees every source
    softcap: float | None = None  # Gemma 2: scores -> softcap * tanh(scores / softcap)
    window: int | None = None  # sliding window: query i sees sources j with i - j < window


class RelativeBias:
    """A bias added to the scores that depends only on the distance from query ``i`` to source
    ``j`` (T5's relative position bias): kept once per stack by distance, [H, Q + K - 1], where the
    model itself makes an [H, Q, K] tensor in every pass."""

    def __init__(self, by_distance: torch.Tensor, n_queries: int) -> None:
        self.by_distance = by_distance  # [H, Q + K - 1]: column (j - i) + Q - 1
        self.n_queries = n_queries

    def rows(self, positions: torch.Tensor, n_sources: int) -> torch.Tensor:
        """The bias of query rows `positions` over sources 0..n_sources-1: [H, r, S]."""
        sources = torch.arange(n_sources, device=positions.device)
        return self.by_distance[:, sources[None, :] - positions[:, None] + (self.n_queries - 1)]


class QueryKeyPattern:
    """One layer's attention weights, kept as queries and keys (same interface as `CausalPattern`).

    Rows are computed in the model's dtype as its eager attention computes them: scores in that
    dtype, scaled, soft-capped, biased, masked, then a float32 softmax cast back."""

    def __init__(
        self, queries: torch.Tensor, keys: torch.Tensor, rule: AttentionRule, bias: RelativeBias | None = None
    ) -> None:
        self.queries = queries  # [T, H, d_head], post-rotary
        self.keys = keys  # [S, n_kv, d_head], post-rotary; S = T but for cross-attention
        self.rule = rule
        self.bias = bias
        self.n_tokens, self.n_heads, _ = queries.shape
        self.n_sources = keys.shape[0]
        self.causal = rule.causal

    def source_counts(self, positions: torch.Tensor) -> torch.Tensor:
        """How many sources each query row has: position + 1 under a causal mask, else S. [r] int64."""
        if self.causal:
            return positions.to(torch.int64) + 1
        return torch.full_like(positions, self.n_sources, dtype=torch.int64)

    def row(self, position: int) -> torch.Tensor:
        """Attention of query `position` to its sources: [H, S]."""
        n_sources = position + 1 if self.causal else self.n_sources
        return self._weights(torch.tensor([position]), n_sources)[:, 0]

    def rows(self, positions: torch.Tensor, n_sources: int) -> torch.Tensor:
        """Rows for several query positions, zero-padded (or cut) to `n_sources` sources: [r, H, n_sources].

        A view of head-major weights ([H, r, S] in memory, the layout the proximity kernel reads),
        so callers that need contiguous rows copy them themselves."""
        positions = positions.to(torch.int64)
        width = int(positions.max()) + 1 if self.causal and len(positions) else self.n_sources
        weights = self._weights(positions, width).transpose(0, 1)
        if n_sources <= width:
            return weights[..., :n_sources]
        return torch.nn.functional.pad(weights, (0, n_sources - width))

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Dense rows start..stop-1 over sources 0..stop-1: [stop - start, H, stop]."""
        return self.rows(torch.arange(start, stop), stop)

    def dense(self) -> torch.Tensor:
        """The full [H, T, S] pattern (zeros where the mask hides a source)."""
        return self.rows(torch.arange(self.n_tokens), self.n_sources).permute(1, 0, 2)

    def attend(self, values: torch.Tensor) -> torch.Tensor:
        """The attention output Σ_j a_ij v_j for every query, in chunks of rows so no [H, T, T]
        is ever whole: values [S, n_kv, d_head] -> [T, H, d_head]. For layers the fast kernels
        cannot compute (soft-capping)."""
        n_kv = values.shape[1]
        group = self.n_heads // n_kv
        out = values.new_empty(self.n_tokens, self.n_heads, values.shape[-1])
        chunk = max(1, _CHUNK_ELEMENTS // (self.n_heads * self.n_sources))
        for start in range(0, self.n_tokens, chunk):
            stop = min(start + chunk, self.n_tokens)
            width = stop if self.causal else self.n_sources
            weights = self._weights(torch.arange(start, stop), width)  # [H, c, S]
            grouped = weights.view(n_kv, group, stop - start, width)
            out[start:stop] = torch.einsum("kgcs,skd->ckgd", grouped, values[:width]).reshape(stop - start, self.n_heads, -1)
        return out

    def _weights(self, positions: torch.Tensor, n_sources: int) -> torch.Tensor:
        """Softmaxed scores of query rows `positions` over sources 0..n_sources-1, head-major:
        [H, r, S]. One matrix product per key/value head for all rows; scaling, capping and
        masking in place, so the only [H, r, S] tensors made are the scores and the softmax (and
        the rows of a relative bias)."""
        positions = positions.to(self.queries.device)
        queries = self.queries[positions]  # [r, H, d]
        keys = self.keys[:n_sources]  # [S, n_kv, d]
        n_rows, _, d_head = queries.shape
        n_kv = keys.shape[1]
        group = self.n_heads // n_kv
        # query head h = kv * group + g, stacked as [kv, (g, r), d] so the product is [H, r, S] as it comes out
        stacked = queries.view(n_rows, n_kv, group, d_head).permute(1, 2, 0, 3).reshape(n_kv, group * n_rows, d_head)
        scores = torch.bmm(stacked, keys.permute(1, 2, 0)).view(self.n_heads, n_rows, n_sources)
        scores.mul_(self.rule.scaling)
        if self.rule.softcap is not None:
            scores.div_(self.rule.softcap).tanh_().mul_(self.rule.softcap)
        if self.bias is not None:
            scores.add_(self.bias.rows(positions, n_sources))
        hidden = self._hidden(positions, n_sources)
        if hidden is not None:
            scores.masked_fill_(hidden, float("-inf"))
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.queries.dtype)

    def _hidden(self, positions: torch.Tensor, n_sources: int) -> torch.Tensor | None:
        """Which sources the mask hides from each query row: [r, S] bool, or None when none is."""
        if not self.causal and self.rule.window is None:
            return None
        sources = torch.arange(n_sources, device=positions.device)
        distance = positions[:, None] - sources[None, :]  # [r, S]
        if self.rule.window is None:
            return distance < 0
        if not self.causal:
            return distance.abs() >= self.rule.window
        return (distance < 0) | (distance >= self.rule.window)

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.queries
        yield self.keys
        if self.bias is not None:
            yield self.bias.by_distance

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

"""A `Run`: one prompt through one model, with exactly the activations the route maths needs.

A Run never changes after it is made, so several app sessions (threads) can share it. The only
mutable part is a private memo of attention-contribution rows computed on demand; it is guarded
by a lock and caches pure functions of the immutable data, so sharing stays safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llm_flow.errors import ArgumentError
from llm_flow.wording import plural

if TYPE_CHECKING:
    from llm_flow.models.base import TransparentLlm


class CausalPattern:
    """Attention weights of one layer, lower triangle only.

    A layer's pattern is [heads, T, T] but half of it is structurally zero; storing the causal
    triangle row by row halves the largest tensor a Run holds (at T = 4096 and 30 layers this is
    the difference between fitting in memory or not) and keeps each query row contiguous.
    """

    def __init__(self, pattern: torch.Tensor) -> None:
        # pattern: [H, T, T]. One slice copy per row: faster than a boolean-mask gather, and
        # needs no index tensor as large as the triangle itself.
        n_heads, n_tokens, _ = pattern.shape
        self.n_heads = n_heads
        self.n_tokens = n_tokens
        self._packed = torch.empty(
            n_heads, _row_offset(n_tokens), dtype=pattern.dtype, device=pattern.device
        )
        for position in range(n_tokens):
            self.row(position).copy_(pattern[:, position, : position + 1])

    @property
    def packed(self) -> torch.Tensor:
        """The causal triangle, row after row: [H, T (T + 1) / 2]; row i starts at i (i + 1) / 2."""
        return self._packed

    def row_offsets(self, positions: torch.Tensor) -> torch.Tensor:
        """Where each query row starts in `packed`: [r] int64."""
        positions = positions.to(torch.int64)
        return positions * (positions + 1) // 2

    def row(self, position: int) -> torch.Tensor:
        """Attention of query `position` to sources 0..position: [H, position + 1]."""
        return self._packed[:, _row_offset(position) : _row_offset(position + 1)]

    def rows(self, positions: torch.Tensor, n_sources: int) -> torch.Tensor:
        """Rows for several query positions, zero-padded to `n_sources` sources: [r, H, n_sources]."""
        out = self._packed.new_zeros(len(positions), self.n_heads, n_sources)
        for k, position in enumerate(positions.tolist()):
            width = min(position + 1, n_sources)
            out[k, :, :width] = self.row(position)[:, :width]
        return out

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Dense rows start..stop-1 over sources 0..stop-1: [stop - start, H, stop]."""
        return self.rows(torch.arange(start, stop), stop)

    def dense(self) -> torch.Tensor:
        """The full [H, T, T] pattern (zeros above the diagonal)."""
        return self.block(0, self.n_tokens).permute(1, 0, 2)

    @property
    def nbytes(self) -> int:
        return self._packed.numel() * self._packed.element_size()


def _row_offset(position: int) -> int:
    return position * (position + 1) // 2


@dataclass(frozen=True, eq=False)
class LayerActivations:
    """What one transformer block did, as the route maths needs it (batch dimension removed)."""

    resid_pre: torch.Tensor  # [T, d_model]
    resid_mid: torch.Tensor | None  # [T, d_model]; None for parallel attention/FFN blocks
    resid_post: torch.Tensor  # [T, d_model]
    values: torch.Tensor  # [T, n_kv_heads, d_head], including the value bias
    pattern: CausalPattern  # attention weights [H, T, T], causal part only
    mlp_out: torch.Tensor  # [T, d_model], exactly what the FFN added to the residual
    neuron_acts: torch.Tensor  # [T, d_mlp], input of the FFN output projection
    attn_gain: torch.Tensor | None  # [T, d_model] post-norm gain on the attention output (Gemma 2/3)
    mlp_gain: torch.Tensor | None  # [T, d_model] post-norm gain on the FFN output


@dataclass(frozen=True, eq=False)
class Run:
    """One prompt through one model. Everything a route, a graph or a view needs."""

    model: "TransparentLlm"
    prompt: str
    tokens: torch.Tensor  # [T] token ids as fed to the model (BOS included if used)
    str_tokens: list[str]  # [T] each token decoded on its own
    logits: torch.Tensor  # [T, vocab]
    layers: tuple[LayerActivations, ...]
    _memo: "RowMemo" = field(default_factory=lambda: RowMemo(), repr=False, compare=False)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def parallel(self) -> bool:
        """True for blocks where attention and FFN both read the block input (GPT-NeoX, GPT-J)."""
        return self.layers[0].resid_mid is None

    def position(self, target: int) -> int:
        """Normalise a possibly negative token index, raising a clear error when out of range."""
        if not -self.n_tokens <= target < self.n_tokens:
            raise ArgumentError(
                f"target position {target} is out of range: the prompt has {plural(self.n_tokens, 'token')} "
                f"(use 0..{self.n_tokens - 1}, or -1 for the last token)"
            )
        return target % self.n_tokens

    def layer(self, layer: int) -> LayerActivations:
        if not -self.n_layers <= layer < self.n_layers:
            raise ArgumentError(
                f"layer {layer} is out of range: the model has {self.n_layers} layers "
                f"(use 0..{self.n_layers - 1})"
            )
        return self.layers[layer]


class RowMemo:
    """Attention-contribution rows already computed for a Run, keyed by (layer, position).

    Switching the target token or the threshold re-walks the graph but only computes rows it
    has not seen before.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[tuple[int, int], tuple[torch.Tensor, float]] = {}

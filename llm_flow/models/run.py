"""A `Run`: one prompt through one model, with exactly the activations the route maths needs.

A Run never changes after it is made, so several app sessions (threads) can share it. The only
mutable part is its store of derived results (`llm_flow.models.derived`): pure functions of the
immutable data, computed on demand and kept under a lock, so sharing stays safe.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import torch

from llm_flow.display import Displayable
from llm_flow.errors import ArgumentError
from llm_flow.models.derived import DerivedStore, tensor_bytes
from llm_flow.models.experts import ExpertRouting
from llm_flow.models.query_keys import QueryKeyPattern
from llm_flow.wording import plural

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from llm_flow.models.base import TransparentLlm

V = TypeVar("V")


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

    causal = True  # query i attends to sources 0..i only

    def source_counts(self, positions: torch.Tensor) -> torch.Tensor:
        """How many sources each query row has: position + 1 under a causal mask. [r] int64."""
        return positions.to(torch.int64) + 1

    def rows(self, positions: torch.Tensor, n_sources: int) -> torch.Tensor:
        """Rows for several query positions, zero-padded (or cut) to `n_sources` sources: [r, H, n_sources]."""
        out = self._packed.new_zeros(len(positions), self.n_heads, n_sources)
        for k, position in enumerate(positions.tolist()):
            row = self.row(position)
            width = min(row.shape[-1], n_sources)
            out[k, :, :width] = row[:, :width]
        return out

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Dense rows start..stop-1 over sources 0..stop-1: [stop - start, H, stop]."""
        return self.rows(torch.arange(start, stop), stop)

    def dense(self) -> torch.Tensor:
        """The full [H, T, T] pattern (zeros above the diagonal)."""
        return self.block(0, self.n_tokens).permute(1, 0, 2)

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self._packed

    @property
    def nbytes(self) -> int:
        return self._packed.numel() * self._packed.element_size()


def _row_offset(position: int) -> int:
    return position * (position + 1) // 2


class FullPattern(CausalPattern):
    """Attention weights of one layer of an encoder, where every query sees every source.

    Same interface as `CausalPattern` (packed rows, offsets, one row, several rows), so the
    route maths and the views serve both; here row i is all T sources and starts at i * T.
    """

    causal = False

    def __init__(self, pattern: torch.Tensor) -> None:
        n_heads, n_tokens, _ = pattern.shape
        self.n_heads = n_heads
        self.n_tokens = n_tokens
        self._packed = pattern.reshape(n_heads, n_tokens * n_tokens).clone()

    def row_offsets(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.to(torch.int64) * self.n_tokens

    def row(self, position: int) -> torch.Tensor:
        """Attention of query `position` to every source: [H, T]."""
        return self._packed[:, position * self.n_tokens : (position + 1) * self.n_tokens]

    def source_counts(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.full_like(positions, self.n_tokens, dtype=torch.int64)


Pattern = CausalPattern | QueryKeyPattern


@dataclass(frozen=True, eq=False)
class LayerActivations:
    """What one transformer block did, as the route maths needs it (batch dimension removed)."""

    resid_pre: torch.Tensor  # [T, d_model]
    resid_mid: torch.Tensor | None  # [T, d_model]; None for parallel attention/FFN blocks
    resid_post: torch.Tensor  # [T, d_model]
    values: torch.Tensor  # [T, n_kv_heads, d_head], including the value bias
    # attention weights [H, T, T]: rebuilt from queries and keys (QueryKeyPattern), or stored
    # for models whose rows cannot be rebuilt exactly (their causal part, or a FullPattern)
    pattern: "Pattern"
    mlp_out: torch.Tensor  # [T, d_model], exactly what the FFN added to the residual
    neuron_acts: torch.Tensor  # [T, d_mlp], input of the FFN output projection
    attn_gain: torch.Tensor | None  # [T, d_model] post-norm gain on the attention output (Gemma 2/3)
    mlp_gain: torch.Tensor | None  # [T, d_model] post-norm gain on the FFN output
    # A mixture-of-experts FFN: each token's experts and weights; neuron_acts then holds the
    # neurons of the token's own experts, slot by slot (llm_flow/models/experts.py)
    experts: ExpertRouting | None = None

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor held (the pattern as what it keeps: queries and keys, or its triangle)."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, (CausalPattern, QueryKeyPattern, ExpertRouting)):
                yield from value.tensors()
            elif value is not None:
                yield value


@dataclass(frozen=True, eq=False)
class Run(Displayable):
    """One prompt through one model. Everything a route, a graph or a view needs.

    In a notebook it shows its model, prompt and next-token predictions; ``.show()`` draws the
    top next tokens after every position, ``.to_frame()`` lists them (`prediction_table`)."""

    model: "TransparentLlm"
    prompt: str
    tokens: torch.Tensor  # [T] token ids as fed to the model (BOS included if used)
    str_tokens: list[str]  # [T] each token decoded on its own
    layers: tuple[LayerActivations, ...]
    derived_store: DerivedStore = field(default_factory=DerivedStore, repr=False, compare=False)

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

    def derived(self, key: Hashable, compute: Callable[[], V]) -> V:
        """`compute()`, kept with this Run under `key` (a frozen dataclass that says what was
        computed) and returned as kept on later calls: see `llm_flow.models.derived`."""
        return self.derived_store.get(key, compute)

    @property
    def nbytes(self) -> int:
        """Bytes this Run holds: activations, packed patterns, logits, tokens, and the results
        derived from it so far (it grows as graphs are built and pages are drawn). Storage shared
        by several views is counted once. Caches use this to stay within their byte budget."""
        return self._activation_bytes + self.derived_store.nbytes

    @cached_property
    def _activation_bytes(self) -> int:
        return tensor_bytes([self.tokens, *(t for layer in self.layers for t in layer.tensors())])

    # --- predictions: the last state through the final norm and unembedding, when asked --------

    def position_logits(self, position: int) -> torch.Tensor:
        """The model's logits after token `position` (negative counts from the end): [vocab] float32.

        Not kept: [T, vocab] is 3 GiB at 16k tokens for a 49k vocabulary; one row is one small
        matrix product from the last layer's output, which the Run keeps."""
        return self.rows_logits([self.position(position)])[0]

    def rows_logits(self, positions: list[int] | range | torch.Tensor) -> torch.Tensor:
        """Logits after several positions: [r, vocab] float32."""
        final = self.layers[-1].resid_post
        index = torch.as_tensor(positions, dtype=torch.int64, device=final.device)
        return self.model.unembed(final[index]).float()

    @property
    def logits(self) -> torch.Tensor:
        """Logits after every position, [T, vocab] float32, computed on each access: for callers
        that need all of them at once (short prompts); others use `position_logits`."""
        return self.rows_logits(range(self.n_tokens))

    def position(self, target: int) -> int:
        """Normalise a possibly negative token index, raising a clear error when out of range."""
        if not -self.n_tokens <= target < self.n_tokens:
            raise ArgumentError(
                f"target position {target} is out of range: the prompt has {plural(self.n_tokens, 'token')} "
                f"(use 0..{self.n_tokens - 1}, or -1 for the last token)"
            )
        return target % self.n_tokens

    @property
    def n_heads(self) -> int:
        return self.layers[0].pattern.n_heads

    def check_head(self, head: int) -> int:
        """`head` if this model has it, else a clear error."""
        if not 0 <= head < self.n_heads:
            raise ArgumentError(
                f"head {head} is out of range: the model has {self.n_heads} heads per layer "
                f"(use 0..{self.n_heads - 1})"
            )
        return head

    def check_neuron(self, neuron: int) -> int:
        """`neuron` if the FFN has it, else a clear error."""
        n_neurons = self.layers[0].neuron_acts.shape[-1]
        if not 0 <= neuron < n_neurons:
            raise ArgumentError(
                f"neuron {neuron} is out of range: each FFN has {n_neurons} neurons (use 0..{n_neurons - 1})"
            )
        return neuron

    def layer(self, layer: int) -> LayerActivations:
        if not -self.n_layers <= layer < self.n_layers:
            raise ArgumentError(
                f"layer {layer} is out of range: the model has {self.n_layers} layers "
                f"(use 0..{self.n_layers - 1})"
            )
        return self.layers[layer]

    # --- notebook display (llm_flow.display) --------------------------------------------------

    def summary(self) -> dict[str, object]:
        from llm_flow.views.predictions import top_predictions

        shown = self.prompt if len(self.prompt) <= 200 else self.prompt[:199] + "…"
        top = top_predictions(self, -1, k=5)
        return {
            "model": self.model.name,
            "prompt": shown,
            "tokens": self.n_tokens,
            "layers × heads": f"{self.n_layers} × {self.n_heads}",
            "next token": ", ".join(f"{p.token!r} {p.probability:.1%}" for p in top),
        }

    def figure(self, k: int = 5) -> "go.Figure":
        from llm_flow.figures.predictions import predictions_figure

        return predictions_figure(self, k)

    def to_frame(self) -> "pd.DataFrame":
        from llm_flow.views.predictions import prediction_table

        return prediction_table(self)

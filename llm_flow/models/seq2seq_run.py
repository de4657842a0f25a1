"""A `Seq2SeqRun`: one source and one target through an encoder–decoder, with its three kinds of
attention. Immutable like a decoder `Run`, so sessions can share it.

Like a decoder `Run` it keeps no attention pattern: per stack and layer, the queries and keys
(`llm_flow.models.seq2seq_capture`), from which `pattern(stack, layer)` rebuilds a layer's weights
exactly when asked: what it keeps grows linearly with the source, where the patterns grew with
its square (T5 has no position table, so nothing but the configured limit bounds the source)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.derived import DerivedStore, tensor_bytes
from llm_flow.models.query_keys import QueryKeyPattern
from llm_flow.validation import SEQ2SEQ_STACKS as STACKS

if TYPE_CHECKING:
    from llm_flow.models.seq2seq import Seq2SeqLlm

V = TypeVar("V")


@dataclass(frozen=True, eq=False)
class Seq2SeqRun:
    """The decoder reads ``decoder_tokens`` = [decoder start] + target ids; ``logits[t]`` is its
    prediction of decoder token ``t + 1`` (target token ``t``) from the tokens up to ``t``."""

    model: "Seq2SeqLlm"
    source: str | None  # the source text, when the run was made from text
    target: str | None  # the target text as typed; None when the model wrote it
    source_tokens: torch.Tensor  # [S] source ids
    decoder_tokens: torch.Tensor  # [T] decoder start, then the target ids
    source_str_tokens: list[str]
    decoder_str_tokens: list[str]
    logits: torch.Tensor  # [T, vocab] float32
    # per layer, queries and keys [n, heads, d_head] as the model's attention takes them:
    encoder_attention: tuple[QueryKeyPattern, ...]  # S queries, S keys, no mask
    decoder_attention: tuple[QueryKeyPattern, ...]  # T queries, T keys, causal
    cross_attention: tuple[QueryKeyPattern, ...]  # T decoder queries reading S source keys, no mask
    derived_store: DerivedStore = field(default_factory=DerivedStore, repr=False, compare=False)

    @property
    def n_source(self) -> int:
        return int(self.source_tokens.shape[0])

    @property
    def n_decoder(self) -> int:
        return int(self.decoder_tokens.shape[0])

    @property
    def written(self) -> bool:
        """The model wrote the target (greedily or sampled): no target text was given."""
        return self.target is None

    def derived(self, key: Hashable, compute: Callable[[], V]) -> V:
        """`compute()`, kept with this run under `key` (a frozen dataclass that says what was
        computed), as a decoder `Run` keeps its contributions and route graphs: see
        `llm_flow.models.derived`."""
        return self.derived_store.get(key, compute)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors the run holds and of what was derived from it so far (the
        contributions, route graphs, the last patterns asked for): what the app's run cache
        counts, so it grows with routes."""
        return self._kept_bytes + self.derived_store.nbytes

    @cached_property
    def _kept_bytes(self) -> int:
        kept = [t for stack in STACKS for layer in self.attention_of(stack) for t in layer.tensors()]
        return tensor_bytes([self.source_tokens, self.decoder_tokens, self.logits, *kept])  # a T5 bias is shared

    @property
    def target_ids(self) -> list[int]:
        """The target's token ids (the decoder's tokens after the start token)."""
        return self.decoder_tokens[1:].tolist()

    def attention_of(self, stack: str) -> tuple[QueryKeyPattern, ...]:
        """What rebuilds one stack's ("encoder", "decoder" or "cross") attention, per layer."""
        if stack not in STACKS:
            raise ArgumentError(f"unknown attention {stack!r}: use one of {', '.join(STACKS)}")
        by_stack = {"encoder": self.encoder_attention, "decoder": self.decoder_attention, "cross": self.cross_attention}
        return by_stack[stack]

    def n_layers_of(self, stack: str) -> int:
        return len(self.attention_of(stack))

    def n_heads_of(self, stack: str) -> int:
        return self.attention_of(stack)[0].n_heads

    def pattern(self, stack: str, layer: int) -> torch.Tensor:
        """The attention weights of one layer of one stack, [heads, queries, sources] float32 on
        the CPU, as the model's eager attention computes them. Kept with the run (counted in
        `nbytes`) until other patterns push it out (`StackPattern.keep`)."""
        layers = self.attention_of(stack)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(layers):
            raise ArgumentError(f"layer {layer!r} is out of range: the {stack} has layers 0..{len(layers) - 1}")
        return self.derived(StackPattern(stack, int(layer)), lambda: layers[layer].dense().float().cpu())

    def patterns(self, stack: str, layers: Sequence[int] | None = None) -> torch.Tensor:
        """The attention weights of `layers` (default: all) of one stack, [layers, heads, queries,
        sources]: for what shows several layers at once (the model view); one layer is `pattern`."""
        chosen = range(self.n_layers_of(stack)) if layers is None else layers
        return torch.stack([self.pattern(stack, layer) for layer in chosen])

    def tokens_of(self, stack: str) -> tuple[list[str], list[str]]:
        """(query tokens, source tokens) of one stack's attention."""
        if stack == "encoder":
            return self.source_str_tokens, self.source_str_tokens
        if stack == "decoder":
            return self.decoder_str_tokens, self.decoder_str_tokens
        self.attention_of(stack)  # checks the name
        return self.decoder_str_tokens, self.source_str_tokens


@dataclass(frozen=True)
class StackPattern:
    """Key of one layer's attention weights in a run's derived store. A pattern is [H, Q, K], the
    size the run avoids keeping, so only the last few asked for stay: one per tab of the attention
    page, where the head view redraws one layer on every setting."""

    keep: ClassVar[int] = 3
    stack: str
    layer: int

"""A `Seq2SeqRun`: one source and one target through an encoder–decoder, with its three kinds of
attention. Immutable like a decoder `Run`, so sessions can share it."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.derived import DerivedStore
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
    encoder_patterns: torch.Tensor  # [encoder layers, heads, S, S]
    decoder_patterns: torch.Tensor  # [decoder layers, heads, T, T] (causal)
    cross_patterns: torch.Tensor  # [decoder layers, heads, T, S]: decoder queries reading source tokens
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
        contributions, route graphs): what the app's run cache counts, so it grows with routes."""
        tensors = (self.source_tokens, self.decoder_tokens, self.logits, self.encoder_patterns,
                   self.decoder_patterns, self.cross_patterns)  # fmt: skip
        return sum(t.numel() * t.element_size() for t in tensors) + self.derived_store.nbytes

    @property
    def target_ids(self) -> list[int]:
        """The target's token ids (the decoder's tokens after the start token)."""
        return self.decoder_tokens[1:].tolist()

    def patterns(self, stack: str) -> torch.Tensor:
        """The attention weights of one stack ("encoder", "decoder" or "cross")."""
        if stack not in STACKS:
            raise ArgumentError(f"unknown attention {stack!r}: use one of {', '.join(STACKS)}")
        return {"encoder": self.encoder_patterns, "decoder": self.decoder_patterns, "cross": self.cross_patterns}[stack]

    def tokens_of(self, stack: str) -> tuple[list[str], list[str]]:
        """(query tokens, source tokens) of one stack's attention."""
        if stack == "encoder":
            return self.source_str_tokens, self.source_str_tokens
        if stack == "decoder":
            return self.decoder_str_tokens, self.decoder_str_tokens
        self.patterns(stack)  # checks the name
        return self.decoder_str_tokens, self.source_str_tokens

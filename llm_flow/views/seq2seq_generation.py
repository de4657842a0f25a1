"""An encoder–decoder writing a target for a source, greedily or sampled, keeping what each
target token was drawn from.

The draw is the decoder-only one (`llm_flow.views.generation.Draw`: `transformers`' own
temperature, top-k and top-p warpers, then one ``multinomial`` with the caller's generator), run
as the last logits processor of the model's own ``generate``, after the model's generation rules
(a forced end-of-sequence at the length limit, banned tokens). So temperature 0 writes what
`Seq2SeqLlm.generate_target` writes, and a generator seeded with ``s`` draws what
``generate(do_sample=True)`` draws after ``torch.manual_seed(s)``. Probabilities and ranks are
those of the scores after the model's rules (`GeneratedToken`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_flow.errors import UnsupportedModelError
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.views.generation import STOP_COUNT, STOP_EOS, Draw, GeneratedToken, eos_ids
from llm_flow.views.sampling import SamplingSettings


@dataclass(frozen=True)
class TargetGeneration:
    """A source and the target tokens written for it."""

    source: str
    source_ids: tuple[int, ...]
    tokens: tuple[GeneratedToken, ...]  # position: the token's place among the decoder's tokens (start = 0)
    text: str  # what the target ids decode to, special tokens left out: the target to analyse
    stop: str  # STOP_EOS or STOP_COUNT

    @property
    def ids(self) -> list[int]:
        """The target ids as written (end-of-sequence included when reached)."""
        return [t.token_id for t in self.tokens]


def write_target(
    seq2seq: Seq2SeqLlm,
    source: str,
    max_new_tokens: int,
    settings: SamplingSettings = SamplingSettings(),
    generator: torch.Generator | None = None,
    on_token: Callable[[GeneratedToken], None] | None = None,
) -> TargetGeneration:
    """Up to `max_new_tokens` target tokens for `source`, drawn with `settings` (temperature 0
    is greedy) from `generator` (None: torch's global random source). `on_token` sees each token
    as it is chosen."""
    source_ids = seq2seq.encode(source)
    seq2seq.check_length(len(source_ids), "the source is", "shorten it")
    draw = Draw(seq2seq, settings, generator, eos_ids(seq2seq), on_token)
    ids = seq2seq.write_target_ids(source_ids, max_new_tokens, draw)
    drawn = [t.token_id for t in draw.tokens]
    if ids != drawn:  # a step of the model's generation config acted after the draw
        raise UnsupportedModelError(
            f"{seq2seq.name}: transformers' generate chose the target tokens {ids}, not the drawn {drawn}; its "
            "generation config adds a step llm-flow's sampling does not show"
        )
    text = seq2seq.tokenizer.decode(ids, skip_special_tokens=True)
    stop = STOP_EOS if draw.tokens and draw.tokens[-1].eos else STOP_COUNT
    return TargetGeneration(source, tuple(source_ids), tuple(draw.tokens), text, stop)


def target_round_trips(seq2seq: Seq2SeqLlm, generation: TargetGeneration) -> bool:
    """True when the written text, tokenised again as a target, gives back the written ids
    (the tokenizer may add an end-of-sequence the model did not reach, or merge pieces)."""
    return generation.text.strip() != "" and seq2seq.encode_target(generation.text) == generation.ids

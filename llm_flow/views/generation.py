"""Generating text one token at a time, keeping what each token was drawn from.

Two paths give the same tokens: `step` samples from a `Run`'s last logits (no forward pass: the
page already has that Run), and `generate` runs `transformers`' own ``generate`` (its KV cache,
its stopping rules) for N tokens at once, drawing each token exactly as `step` does. The result is a `Generation`: the prompt's token ids, every generated token with
its probabilities, and the text they decode to, which becomes the next prompt to analyse.

Text and ids do not always round-trip: the analysis of the new text tokenises it again, and a
tokenizer may merge or split the generated pieces differently (``" Par" + "is"`` → ``" Paris"``,
or a multi-byte character cut in half). `predicting_positions` says, for each generated token,
which position of a re-analysed Run predicted it, and None where the ids no longer agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import LogitsProcessor

from llm_flow.errors import ArgumentError, PromptError, UnsupportedModelError
from llm_flow.validation import check_prompt_text
from llm_flow.models.base import TransparentLlm
from llm_flow.models.families import refuse_encoder
from llm_flow.models.run import Run
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.views.sampling import SamplingSettings, SamplingStages, choose, sampling_stages
from llm_flow.views.tokens import ranks

#: Why generation stopped.
STOP_EOS = "eos"  # the model produced an end-of-sequence token
STOP_LIMIT = "limit"  # the text reached the longest prompt the model may analyse
STOP_COUNT = "count"  # the requested number of tokens was generated


@dataclass(frozen=True)
class GeneratedToken:
    token_id: int
    token: str  # the id decoded on its own
    position: int  # where it sits in the generated ids; position - 1 predicted it
    probability: float  # in the distribution it was drawn from (after temperature, top-k, top-p)
    model_probability: float  # softmax of the raw logits: the model's own belief
    rank: int  # in the raw logits, from 1 (the model's top choice), as `views.tokens.ranks`
    eos: bool = False  # an end-of-sequence token: ends generation, not part of the text


@dataclass(frozen=True)
class Generation:
    """A prompt and the tokens generated after it."""

    prompt: str
    prompt_ids: tuple[int, ...]  # as the model encodes the prompt (BOS included if it uses one)
    tokens: tuple[GeneratedToken, ...] = ()
    continuation: str = ""  # what the generated tokens (EOS excluded) decode to after the prompt
    stop: str | None = None  # STOP_* of the last generation call

    @property
    def ids(self) -> tuple[int, ...]:
        """Prompt and generated ids, EOS included, as `transformers.generate` returns them."""
        return self.prompt_ids + tuple(t.token_id for t in self.tokens)

    @property
    def text(self) -> str:
        """The prompt followed by the generated text: the next prompt to analyse."""
        return self.prompt + self.continuation

    @property
    def ended(self) -> bool:
        """True once an EOS token was generated: nothing more can follow."""
        return any(t.eos for t in self.tokens)


_NO_TEXT = "it fills in [MASK] tokens and does not generate text"


def start(model: TransparentLlm, prompt: str) -> Generation:
    """A generation with nothing generated yet, refusing prompts already at the length limit."""
    refuse_encoder(model.info, _NO_TEXT)
    ids = tuple(model.encode(check_prompt_text(prompt)))
    _room(model, len(ids))
    return Generation(prompt, ids)


def from_run(run: Run) -> Generation:
    """A generation continuing the analysed prompt, with the ids the Run was made from."""
    refuse_encoder(run.model.info, _NO_TEXT)
    _room(run.model, run.n_tokens)
    return Generation(run.prompt, tuple(run.tokens.tolist()))


def _room(model: TransparentLlm, n_tokens: int) -> int:
    """How many tokens may still be generated after `n_tokens` so the text can be analysed."""
    model.check_length(
        n_tokens + 1, "the text and one more token are", "nothing more can be generated and analysed; shorten the prompt"
    )
    return model.token_limit()[0] - n_tokens


def eos_ids(model: TransparentLlm) -> frozenset[int]:
    """End-of-sequence ids: the tokenizer's and the generation config's (which may list several)."""
    ids = {model.tokenizer.eos_token_id}
    hf = model.hf_seq2seq if isinstance(model, Seq2SeqLlm) else model.hf_model
    config_eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return frozenset(i for i in ids if i is not None)


def step(
    run: Run, settings: SamplingSettings, generator: torch.Generator | None = None
) -> tuple[SamplingStages, Generation]:
    """One token drawn from the Run's last logits: no forward pass."""
    generation = from_run(run)
    stages = sampling_stages(run.position_logits(-1), settings)
    token = _token(run.model, choose(stages, generator), len(generation.ids), stages, eos_ids(run.model))
    return stages, _append(run.model, generation, [token], stop=None)


class Draw(LogitsProcessor):
    """The last logits processor of ``generate``: runs each step's raw logits through the page's
    sampling stages, draws the token with the caller's generator, keeps what the token was drawn
    from, and leaves that token the only one greedy decoding can pick. ``generate`` keeps the KV
    cache, the positions and the stopping rules; the draw is the same as `step`'s."""

    def __init__(
        self,
        model: TransparentLlm,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        stops: frozenset[int],
        on_token: Callable[[GeneratedToken], None] | None,
    ) -> None:
        self.model, self.settings, self.generator, self.stops, self.on_token = model, settings, generator, stops, on_token
        self.tokens: list[GeneratedToken] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stages = sampling_stages(scores[0], self.settings)  # scores: [1, V] raw float32 logits, last position
        token = _token(self.model, choose(stages, self.generator), input_ids.shape[1], stages, self.stops)
        self.tokens.append(token)
        if self.on_token is not None:
            self.on_token(token)
        only = torch.full_like(scores, -math.inf)
        only[0, token.token_id] = 0.0
        return only


def generate(
    model: TransparentLlm,
    prompt: str | Generation,
    max_new_tokens: int,
    settings: SamplingSettings = SamplingSettings(),
    generator: torch.Generator | None = None,
    on_token: Callable[[GeneratedToken], None] | None = None,
) -> Generation:
    """Up to `max_new_tokens` tokens by `transformers`' own ``generate`` (KV cache and all).

    Stops after an EOS token or when the text would grow past the longest prompt the model may
    analyse (`Generation.stop` says which). `on_token` sees each token as it is chosen (progress).
    Greedy decoding equals ``generate(do_sample=False)``; seeded sampling equals
    ``generate(do_sample=True)`` after ``torch.manual_seed`` with the same seed, and `step` with
    the same generator, once per token, draws the same tokens.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ArgumentError(f"the number of tokens to generate must be at least 1 (got {max_new_tokens})")
    generation = start(model, prompt) if isinstance(prompt, str) else prompt
    if generation.ended:
        raise PromptError("the text already ends with an end-of-sequence token: undo it or change the prompt")
    count = min(max_new_tokens, _room(model, len(generation.ids)))
    stops = eos_ids(model)
    draw = Draw(model, settings, generator, stops, on_token)
    ids = model.generate_ids(list(generation.ids), count, draw, stops)
    drawn = [t.token_id for t in draw.tokens]
    if ids != drawn:  # a step of the model's generation config acted after the draw
        raise UnsupportedModelError(
            f"{model.name}: transformers' generate chose the tokens {ids}, not the drawn {drawn}; its "
            "generation config adds a step llm-flow's sampling does not show"
        )
    if draw.tokens[-1].eos:
        stop = STOP_EOS
    else:
        stop = STOP_COUNT if count == max_new_tokens else STOP_LIMIT
    return _append(model, generation, draw.tokens, stop)


def _token(
    model: TransparentLlm, token_id: int, position: int, stages: SamplingStages, stops: frozenset[int]
) -> GeneratedToken:
    return GeneratedToken(
        token_id=token_id,
        token=model.decode_tokens([token_id])[0],
        position=position,
        probability=float(stages.probs[token_id]),
        model_probability=float(stages.model_probs[token_id]),
        rank=ranks(stages.logits, [token_id])[0],
        eos=token_id in stops,
    )


def _append(model: TransparentLlm, generation: Generation, new: list[GeneratedToken], stop: str | None) -> Generation:
    tokens = generation.tokens + tuple(new)
    continuation = _continuation(model, generation.prompt_ids, tokens)
    return replace(generation, tokens=tokens, continuation=continuation, stop=stop)


def _continuation(model: TransparentLlm, prompt_ids: tuple[int, ...], tokens: tuple[GeneratedToken, ...]) -> str:
    """The text the generated ids add to the prompt's text.

    Decoding the whole sequence and removing the decoded prompt keeps what decoding a piece on
    its own would lose (SentencePiece drops a leading space of the first piece)."""
    generated = [t.token_id for t in tokens if not t.eos]
    if not generated:
        return ""
    decode = lambda ids: model.tokenizer.decode(  # noqa: E731
        list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return decode(list(prompt_ids) + generated)[len(decode(prompt_ids)) :]


def predicting_positions(run: Run, generation: Generation) -> list[int | None]:
    """For each generated token, the position of `run` whose prediction it was, or None.

    Position ``p - 1`` of the Run predicted the token at ``p`` when the Run's ids up to ``p - 1``
    are the generation's (the same context); after a re-tokenisation changed them, None."""
    run_ids = run.tokens.tolist()
    ids = generation.ids
    agree = 0
    while agree < min(len(run_ids), len(ids)) and run_ids[agree] == ids[agree]:
        agree += 1
    return [t.position - 1 if t.position <= agree else None for t in generation.tokens]


def round_trips(model: TransparentLlm, generation: Generation) -> bool:
    """True when the generated text, tokenised again, gives back the generated ids (EOS aside)."""
    analysable = generation.prompt_ids + tuple(t.token_id for t in generation.tokens if not t.eos)
    return tuple(model.encode(generation.text)) == analysable


def generation_in_run(run: Run, generated: Sequence[int]) -> Generation | None:
    """The generation behind `run`'s text when its last tokens are `generated` (what a link
    keeps: ids survive re-tokenisation, text does not), or None when they are not its last
    tokens. Each token's model probability and rank come from the Run's own logits; the
    distribution it was drawn from is not known, so its `probability` is the model's."""
    ids = run.tokens.tolist()
    count = len(generated)
    if not 0 < count < len(ids) or tuple(ids[-count:]) != tuple(generated):
        return None
    prompt_ids = tuple(ids[:-count])
    prompt = run.model.tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    if not run.prompt.startswith(prompt):
        return None
    tokens = []
    for position in range(len(prompt_ids), len(ids)):
        logits = run.position_logits(position - 1).double()
        token_id = ids[position]
        probability = float(torch.softmax(logits, -1)[token_id])
        rank = int((logits > logits[token_id]).sum())
        decoded = run.model.decode_tokens([token_id])[0]
        tokens.append(GeneratedToken(token_id, decoded, position, probability, probability, rank))
    return Generation(prompt, prompt_ids, tuple(tokens), run.prompt[len(prompt):])

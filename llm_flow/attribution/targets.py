"""What an attribution explains: a prompt and the continuation whose every token is a target.

Step ``t`` explains continuation token ``t`` from the prompt and the continuation before it, so
all steps share one token sequence. Token ids are kept as ids from here on: a generated
continuation decoded and re-tokenised could split differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_flow.validation import check_prompt_text
from llm_flow.errors import ArgumentError, PromptError
from llm_flow.models.base import TransparentLlm
from llm_flow.views.generation import Generation, generate
from llm_flow.views.sampling import SamplingSettings
from llm_flow.wording import plural

#: Most tokens one request may generate: every one is a separate attribution step.
MAX_GENERATE = 64
#: How `check_length` words a request over the limit.
_TOO_LONG = ("prompt and continuation are", "shorten the prompt or the continuation")


@dataclass(frozen=True)
class Sequence:
    """Prompt and continuation as token ids; the continuation tokens are the targets. Made once
    (generation is the slow part) and attributed by any number of methods."""

    ids: tuple[int, ...]  # [n_prompt + n_steps]
    n_prompt: int
    prompt: str = ""  # as typed (the ids include the chat template if one was applied)
    generated: bool = False  # the continuation was generated greedily, not given
    chat_template: bool = False
    #: An encoder's explained position, its [MASK]: the ids are then the input followed by the one
    #: token explained there, and the step sees every input token (llm_flow.attribution.masked).
    position: int | None = None

    @property
    def n_steps(self) -> int:
        return len(self.ids) - self.n_prompt

    def context(self, step: int) -> list[int]:
        """What step `step` sees: the prompt and the continuation before its target."""
        return list(self.ids[: self.n_prompt + step])

    def target_token_id(self, step: int) -> int:
        """The id of the token step `step` explains."""
        return self.ids[self.n_prompt + step]


def encode_prompt(model: TransparentLlm, prompt: str, chat_template: bool = False) -> list[int]:
    """The prompt's ids; with `chat_template`, as a user turn followed by the assistant's turn."""
    check_prompt_text(prompt)
    if not chat_template:
        return model.encode(prompt)
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ArgumentError(
            f"{model.name} has no chat template: set chat_template to false for this model"
        )
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def prepare(
    model: TransparentLlm,
    prompt: str,
    continuation: str | None = None,
    generate: int | None = None,
    chat_template: bool = False,
) -> Sequence:
    """Prompt ids plus a continuation typed by the user or generated greedily (`generate` tokens;
    generation stops early after an end-of-sequence token, which is then the last target). An
    encoder's prompt instead gets the token explained at its mask: `continuation` if given, else
    its own prediction (`llm_flow.attribution.masked`)."""
    if model.info.bidirectional:
        from llm_flow.attribution.masked import prepare_masked

        return prepare_masked(model, prompt, continuation, generate, chat_template)
    if continuation is not None and generate is not None:
        raise ArgumentError("give either a continuation or a number of tokens to generate, not both")
    prompt_ids = encode_prompt(model, prompt, chat_template)
    if not prompt_ids:
        raise PromptError("the prompt produced no tokens")
    if continuation is not None:
        if not continuation:
            raise ArgumentError("the continuation is empty: type the text to explain, or generate tokens")
        new_ids = list(model.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if not new_ids:
            raise ArgumentError(f"the continuation {continuation!r} produced no tokens")
        model.check_length(len(prompt_ids) + len(new_ids), *_TOO_LONG)
    else:
        n = 1 if generate is None else generate
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_GENERATE:
            raise ArgumentError(f"the number of tokens to generate must be 1..{MAX_GENERATE} (got {n!r})")
        model.check_length(len(prompt_ids) + n, *_TOO_LONG)
        new_ids = greedy(model, prompt_ids, n)
    return Sequence(tuple(prompt_ids + new_ids), len(prompt_ids), prompt, continuation is None, chat_template)


def greedy(model: TransparentLlm, prompt_ids: list[int], n: int) -> list[int]:
    """`n` greedy tokens after the prompt (fewer if the model ends the sequence), decoded as the
    Playground and `llm-flow generate` decode them."""
    generation = generate(model, Generation("", tuple(prompt_ids)), n, SamplingSettings(temperature=0))
    return [t.token_id for t in generation.tokens]


def context_text(model: TransparentLlm, ids: list[int] | tuple[int, ...]) -> str:
    """Token ids as a prompt that `model.encode` turns back into (nearly) the same ids: special
    tokens kept (chat markers), except a leading BOS that encoding adds again by itself."""
    ids = list(ids)
    bos = model.tokenizer.bos_token_id
    if ids and bos is not None and ids[0] == bos and model.encode("a")[:1] == [bos]:
        ids = ids[1:]
    return model.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

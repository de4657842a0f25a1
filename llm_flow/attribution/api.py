"""`attribute`: one call from a prompt and a continuation to an :class:`Attribution`."""

from __future__ import annotations

from llm_flow.attribution.base import FUNCTIONS, Method, Problem, Progress, check_choice
from llm_flow.attribution.registry import get_method
from llm_flow.attribution.result import Attribution
from llm_flow.attribution.scores import step_scores
from llm_flow.attribution.targets import Sequence, prepare
from llm_flow.attribution.seq2seq import attribute_seq2seq
from llm_flow.errors import ArgumentError
from llm_flow.models.base import TransparentLlm
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.views.tokens import single_token


def attribute(
    model: TransparentLlm,
    prompt: str,
    method: str | Method = "integrated_gradients",
    *,
    continuation: str | None = None,
    generate: int | None = None,
    foil: str | None = None,
    function: str | None = None,
    chat_template: bool = False,
    progress: Progress | None = None,
    **options: object,
) -> Attribution:
    """Which input tokens made the model produce each token of the continuation.

    The continuation is `continuation` (text, tokenised without special tokens) or `generate`
    greedy tokens (default: one). `method` is a name from `METHODS` (its options as keyword
    arguments) or a `Method`. Gradient and perturbation methods explain `function` of the
    output: the target's ``"probability"`` (the default) or ``"logit"``; with a `foil` token
    (``" London"``) they explain the difference f(target) - f(foil), by default of the logits.
    Attention and ALTI rollout read the forward pass and ignore both.
    `progress(done, total)` is called after each step.

    An encoder (BERT, RoBERTa, MiniLM) explains its prediction at the prompt's first mask token:
    `continuation` is then the one token explained there (default: its own top prediction), and
    every input token, before and after the mask, is a source (`llm_flow.attribution.masked`).
    An encoder–decoder's prompt is its source and `continuation` its target: each target token
    is attributed to the source and the target prefix (`llm_flow.attribution.seq2seq`).
    """
    if isinstance(model, Seq2SeqLlm):
        if chat_template:
            raise ArgumentError(f"{model.name} is an encoder–decoder: it has no chat template to apply")
        return attribute_seq2seq(model, prompt, method, continuation=continuation, generate=generate, foil=foil,
                                 function=function, progress=progress, **options)  # fmt: skip
    method = method if isinstance(method, Method) else get_method(method, **options)
    foil_id, function = _explained(model, foil, function)
    sequence = prepare(model, prompt, continuation, generate, chat_template)
    return attribute_sequence(model, sequence, method, foil=foil, function=function, progress=progress)


def attribute_sequence(
    model: TransparentLlm,
    sequence: Sequence,
    method: str | Method,
    *,
    foil: str | None = None,
    function: str | None = None,
    progress: Progress | None = None,
    **options: object,
) -> Attribution:
    """`attribute` for a sequence already made by `prepare` (one generation, many methods)."""
    method = method if isinstance(method, Method) else get_method(method, **options)
    foil_id, function = _explained(model, foil, function)
    explained = function if method.uses_output else None
    problem = Problem(model, sequence, explained, foil_id if method.uses_output else None, progress)
    output = method.compute(problem)
    ids = list(sequence.ids)
    special = set(model.tokenizer.all_special_ids)
    return Attribution(
        model=model.name,
        method=method.name,
        options=method.settings(),
        function=explained,
        foil=foil,
        tokens=model.decode_tokens(ids),
        token_ids=ids,
        special=[i in special for i in ids],
        n_prompt=sequence.n_prompt,
        spans=[(p, p + 1) for p in range(len(ids) - 1)],
        scores=output.scores,
        step_scores=step_scores(model, sequence, foil_id),
        deltas=output.deltas,
        scale=method.scale,
        prompt=sequence.prompt,
        generated=sequence.generated,
        chat_template=sequence.chat_template,
        position=sequence.position,
    )


def _explained(model: TransparentLlm, foil: str | None, function: str | None) -> tuple[int | None, str]:
    """The foil's token id and the output function (logit by default when there is a foil)."""
    foil_id = single_token(model, foil) if foil is not None else None
    if function is None:
        function = "logit" if foil_id is not None else "probability"
    check_choice("function", function, FUNCTIONS)
    return foil_id, function

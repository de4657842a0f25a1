"""Attribution on an encoder (BERT, RoBERTa, MiniLM): its prediction at the ``[MASK]`` token.

An encoder predicts no continuation; it predicts, at its first mask token, what the mask hides
("The capital of France is [MASK]." -> "paris"). That is one step whose target is the predicted
(or given) token and whose sources are every input token, those after the mask included: the
attention is bidirectional. The `Sequence` keeps the same shape as for a decoder (the input ids,
then the target) with `position` naming the mask, so every method reads the same problem.

The explained output is the masked-LM head applied to the mask's final state; a checkpoint
without that head (a sentence encoder) predicts through its input embeddings, as its routes and
logit lens do (docs/method.md#encoders).
"""

from __future__ import annotations

import torch

from llm_flow.attribution.targets import Sequence, encode_prompt
from llm_flow.errors import ArgumentError, PromptError
from llm_flow.models.base import TransparentLlm
from llm_flow.models.encoders import segment_inputs
from llm_flow.views.tokens import single_token


def prepare_masked(
    model: TransparentLlm, prompt: str, token: str | None = None, generate: int | None = None, chat_template: bool = False
) -> Sequence:
    """The prompt's ids and the token explained at its first mask: `token` (one token, as text)
    or, by default, the model's own top prediction there."""
    if chat_template:
        raise ArgumentError(f"{model.name} is an encoder: it has no chat template; set chat_template to false")
    if generate not in (None, 1):
        raise ArgumentError(
            f"{model.name} is an encoder: it predicts one token at its mask, it does not generate {generate} tokens"
        )
    ids = encode_prompt(model, prompt)
    model.check_length(len(ids), "the prompt is", "shorten the prompt")
    position = mask_position(model, ids)
    if token is not None:
        target_token_id = single_token(model, token, role="token to explain at the mask")
    else:
        target_token_id = int(model.run_ids(ids, prompt).position_logits(position).argmax())
    return Sequence(tuple(ids + [target_token_id]), len(ids), prompt, token is None, False, position)


def mask_position(model: TransparentLlm, ids: list[int]) -> int:
    """The first mask token of `ids`; a PromptError saying how to write one when there is none."""
    mask = getattr(model.tokenizer, "mask_token_id", None)
    if mask is None:
        raise ArgumentError(f"{model.name} has no mask token: its predictions cannot be attributed")
    if mask not in ids:
        raise PromptError(
            f"{model.name} is an encoder: attribution explains its prediction at a mask token; put "
            f"{model.tokenizer.mask_token} in the prompt (e.g. 'The capital of France is {model.tokenizer.mask_token}.')"
        )
    return ids.index(mask)


def masked_logits(model: TransparentLlm, ids: list[int], embeds: torch.Tensor, position: int) -> torch.Tensor:
    """Logits [B, vocab] at `position` of input embeddings [B, T, d] whose tokens are `ids`
    (their token types, for sentence pairs, come from the ids)."""
    hf = model.hf_model
    inputs = segment_inputs(hf.config, model.tokenizer.sep_token_id, ids, embeds.device)
    inputs = {name: value.expand(embeds.shape[0], -1) for name, value in inputs.items()}
    if model.info.no_lm_head:  # the head is random: predict through the input embeddings
        hidden = hf.base_model(inputs_embeds=embeds, **inputs).last_hidden_state[:, position]
        return (hidden @ hf.get_input_embeddings().weight.T).float()
    return hf(inputs_embeds=embeds, **inputs).logits[:, position].float()

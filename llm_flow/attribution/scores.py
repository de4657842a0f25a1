"""Step scores: what the model thought of each target token when it produced it.

One forward pass over the prompt and the continuation (without its last token) answers every
step at once: causal attention makes the logits at position ``n_prompt + t - 1`` exactly those
that step t's prediction came from. An encoder's one step is its prediction at the mask.
"""

from __future__ import annotations

import torch

from llm_flow.attribution.targets import Sequence
from llm_flow.models.base import TransparentLlm


def step_scores(model: TransparentLlm, sequence: Sequence, foil: int | None = None) -> dict[str, list[float]]:
    """Per step: ``probability`` and ``logit`` of the target, ``entropy`` of the distribution
    (nats); with a foil also ``foil_probability``, ``foil_logit``, ``probability_difference``
    (target minus foil) and ``logit_difference``."""
    hf = model.hf_model
    device = next(hf.parameters()).device
    ids = torch.tensor([sequence.ids[:-1]], device=device)
    with model.lock, torch.no_grad():
        if sequence.position is not None:
            from llm_flow.attribution.masked import masked_logits

            embeds = hf.get_input_embeddings()(ids)
            logits = masked_logits(model, list(sequence.ids[:-1]), embeds, sequence.position)  # [1, V]
        else:
            logits = hf(ids, logits_to_keep=sequence.n_steps, use_cache=False).logits[0].float()  # [n_steps, V]
    target_ids = torch.tensor(sequence.ids[sequence.n_prompt :], device=device)
    return scores_of(logits, target_ids, foil)


def scores_of(logits: torch.Tensor, target_ids: torch.Tensor, foil: int | None = None) -> dict[str, list[float]]:
    """The step scores of `step_scores` from each step's logits [n_steps, V] and target ids [n_steps]."""
    logits = logits.float()
    log_probs = logits.log_softmax(-1)
    rows = torch.arange(target_ids.shape[0], device=logits.device)
    target_ids = target_ids.to(logits.device)
    scores = {
        "probability": log_probs[rows, target_ids].exp(),
        "logit": logits[rows, target_ids],
        "entropy": torch.special.entr(log_probs.exp()).sum(-1),  # 0 log 0 = 0
    }
    if foil is not None:
        scores["foil_probability"] = log_probs[:, foil].exp()
        scores["foil_logit"] = logits[:, foil]
        scores["probability_difference"] = scores["probability"] - scores["foil_probability"]
        scores["logit_difference"] = scores["logit"] - scores["foil_logit"]
    return {name: values.cpu().tolist() for name, values in scores.items()}

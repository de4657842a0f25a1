"""The logit lens on an encoder–decoder's decoder nodes: a residual state of the decoder read
through the model's own tail (the decoder's final norm where it has one, T5's rescaling, the
output head and its bias), as if it were the last layer's output.

The tail is the model's own code: the state replaces the last decoder layer's output in one
forward pass, so whatever the family does after its layers (T5: RMSNorm and d_model^-1/2 with
tied embeddings; mBART: LayerNorm; Marian and BART: nothing but ``final_logits_bias``) applies.
Encoder nodes have no lens: the unembedding reads the decoder's states only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.routes.seq2seq import decoder_states
from llm_flow.views.tokens import TokenScore, check_count, top_tokens


@dataclass(frozen=True)
class DecoderStatesOf:
    """Key of a run's decoder states in its derived store (they depend on nothing but the run)."""


@dataclass(frozen=True)
class PairLensOf:
    """Key of one decoder node kind and layer's lens logits, every position: [T, vocab]."""

    kind: str
    layer: int
    keep = 8  # the panel shows one node at a time: a few recent ones stay


def pair_logit_lens(run: Seq2SeqRun, kind: str, layer: int, position: int, k: int = 10) -> list[TokenScore]:
    """Top-`k` tokens of decoder node ``dec:{kind}{layer}_{position}`` through the model's tail,
    with their probabilities (softmax over the vocabulary)."""
    check_count(k)
    if not 0 <= position < run.n_decoder:
        raise ArgumentError(f"decoder position {position} is out of range (0..{run.n_decoder - 1})")
    logits = run.derived(PairLensOf(kind, layer), lambda: lens_logits(run, kind, layer))[position]
    probabilities = torch.softmax(logits.double(), -1)
    return [replace(t, probability=float(probabilities[t.token_id])) for t in top_tokens(run.model, logits, k)]


def lens_logits(run: Seq2SeqRun, kind: str, layer: int) -> torch.Tensor:
    """[T, vocab] float32: the decoder's states of one node kind and layer, every position,
    through the model's tail."""
    states = run.derived(
        DecoderStatesOf(), lambda: decoder_states(run.model, run.source_tokens.tolist(), run.target_ids)
    )
    if (kind, layer) not in states:
        raise ArgumentError(f"the decoder has no node {kind}{layer} (kinds X, A, C, I; layers 0..{run.model.info.n_layers - 1})")
    hf = run.model.hf_seq2seq
    decoder = hf.get_decoder()
    last = (decoder.block if hasattr(decoder, "block") else decoder.layers)[-1]
    device = next(hf.parameters()).device
    state = states[(kind, layer)].to(device)[None]  # [1, T, d]

    def replace_output(module, args, output):
        return (state, *output[1:]) if isinstance(output, tuple) else state

    handle = last.register_forward_hook(replace_output)
    try:
        with run.model.lock, torch.no_grad():
            out = hf(input_ids=run.source_tokens[None].to(device), decoder_input_ids=run.decoder_tokens[None].to(device),
                     return_dict=True, use_cache=False)  # fmt: skip
    finally:
        handle.remove()
    return out.logits[0].float().cpu()

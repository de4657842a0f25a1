"""Which encoder–decoders llm-flow explains, and how each one's modules sit, decided from the
config alone: every reader of their modules (the run's query/key capture, the route
contributions, the model panel) asks here, so they cannot disagree about a model, and a model
type outside the checked ones is refused with the reason rather than read as the wrong modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from llm_flow.errors import UnsupportedModelError

#: transformers model types llm-flow explains as encoder–decoders (checked on tiny random models).
SEQ2SEQ_TYPES = {"marian": "Marian", "t5": "T5", "mt5": "mT5", "bart": "BART", "mbart": "mBART"}
_T5_TYPES = ("t5", "mt5")
_POST_LN_TYPES = ("marian", "bart")


@dataclass(frozen=True)
class Seq2SeqLayout:
    """How an encoder–decoder's layers are built.

    `t5_blocks`: T5-style ``block[l].layer[...]`` (self-attention, cross-attention, FFN
    sublayers) with attention projections ``q``, ``k``, ``v``, ``o`` and no biases; otherwise
    BART-style ``layers[l]`` with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``.
    `post_ln`: each block's LayerNorm comes after its residual add, residual included (Marian,
    BART); otherwise the block reads a normalised residual and adds to it (T5, mBART)."""

    t5_blocks: bool
    post_ln: bool


def seq2seq_layout(config: PretrainedConfig) -> Seq2SeqLayout:
    """The layout of a model of a type in `SEQ2SEQ_TYPES`; any other type is refused."""
    model_type = config.model_type
    if model_type not in SEQ2SEQ_TYPES:
        raise UnsupportedModelError(seq2seq_refusal(f"model type {model_type!r}"))
    return Seq2SeqLayout(t5_blocks=model_type in _T5_TYPES, post_ln=model_type in _POST_LN_TYPES)


def seq2seq_refusal(architecture: str) -> str:
    """Why an encoder–decoder outside `SEQ2SEQ_TYPES` is refused."""
    return (
        f"{architecture} is an encoder–decoder llm-flow has not been checked on; it explains "
        f"{', '.join(SEQ2SEQ_TYPES.values())}"
    )

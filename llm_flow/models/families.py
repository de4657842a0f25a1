"""Which kinds of transformers model llm-flow can explain, decided from the config alone.

A checkpoint of a family llm-flow cannot explain exactly must be refused before its weights are
read, with the reason: loading a BERT checkpoint through ``AutoModelForCausalLM`` gives a model
with a causal mask and a next-token head the checkpoint never had, whose routes look plausible
and are wrong. An encoder–decoder has no causal-LM class at all: the ones llm-flow explains load
as sequence-to-sequence models (`llm_flow.models.seq2seq`).
"""

from __future__ import annotations

import re

from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from llm_flow.errors import UnsupportedModelError
from llm_flow.models.seq2seq_layout import SEQ2SEQ_TYPES, seq2seq_refusal

_OTHER_MODALITY = re.compile(r"vision|audio|image|speech|video|vq")


def architecture_name(config: PretrainedConfig) -> str:
    """The class a checkpoint names for itself (``BertForMaskedLM``), else its model type."""
    return (getattr(config, "architectures", None) or [config.model_type])[0]


def is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False)) or (
        config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )


def is_encoder(config: PretrainedConfig) -> bool:
    """A bidirectional encoder (BERT, RoBERTa, DistilBERT ...): a masked-LM family not configured
    as a decoder. (BERT with ``is_decoder`` set really is causal.)"""
    return (
        config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not is_encoder_decoder(config)
        and not getattr(config, "is_decoder", False)
    )


def model_class(name: str, config: PretrainedConfig) -> type:
    """The transformers auto class to load `config` with, or an UnsupportedModelError saying why
    llm-flow cannot explain it."""
    refusal = refusal_reason(config)
    if refusal is not None:
        raise UnsupportedModelError(f"{name}: {refusal}")
    if is_encoder_decoder(config):
        return AutoModelForSeq2SeqLM
    return AutoModelForMaskedLM if is_encoder(config) else AutoModelForCausalLM


def masked_lm_class_name(config: PretrainedConfig) -> str | None:
    """The masked-LM class of an encoder family (``BertForMaskedLM``), None if it has none."""
    return MODEL_FOR_MASKED_LM_MAPPING_NAMES.get(config.model_type)


def refusal_reason(config: PretrainedConfig, architecture: str | None = None) -> str | None:
    """Why llm-flow refuses this kind of model, in one sentence naming it (`architecture`, by
    default the one the config names); None when it does not."""
    arch = architecture or architecture_name(config)
    other_inputs = sorted(key for key in getattr(config, "sub_configs", {}) if _OTHER_MODALITY.search(key))
    if other_inputs:
        return (
            f"{arch} is a multimodal model (it also has {', '.join(other_inputs)}); llm-flow explains "
            "text-only language models"
        )
    if is_encoder_decoder(config):
        return None if config.model_type in SEQ2SEQ_TYPES else seq2seq_refusal(arch)
    if is_encoder(config) and masked_lm_class_name(config) not in SUPPORTED_ARCHITECTURES:
        return (
            f"{arch} is a bidirectional encoder TransformerLens's bridge has no adapter for "
            "(llm-flow explains the BERT and RoBERTa encoders it has)"
        )
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and getattr(config, "is_decoder", False):
        return (
            f"{arch} is an encoder family configured as a decoder (is_decoder); llm-flow explains "
            "it as the bidirectional encoder it was trained as: load it without is_decoder"
        )
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return (
            f"{arch} ({config.model_type}) is not a text language model transformers can load "
            "with a next-token head (AutoModelForCausalLM)"
        )
    return None


def refuse_encoder(info, what: str) -> None:
    """An UnsupportedModelError for a capability only decoders have (`what` says which and why),
    when `info` (a ModelInfo) describes an encoder."""
    if info.bidirectional:
        raise UnsupportedModelError(f"{info.name}: {info.architecture} is an encoder; {what}")

"""Encoders (BERT, RoBERTa, MiniLM) as the masked-LM model TransformerLens's bridge wraps.

A checkpoint saved without its masked-LM head (a sentence encoder such as all-MiniLM-L6-v2, a
``BertModel``) still loads as ``BertForMaskedLM``: transformers then initialises the head at
random. Those random weights must never be read, so loading reports whether the head came from
the checkpoint; without it llm-flow predicts through the input embeddings
(docs/method.md#encoders).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from llm_flow.errors import ModelLoadError


def load_masked_lm(folder_or_id: str, **options: object) -> tuple[PreTrainedModel, bool]:
    """The encoder with a masked-LM head, and whether that head is the checkpoint's own."""
    model, info = AutoModelForMaskedLM.from_pretrained(folder_or_id, output_loading_info=True, **options)
    return model, _has_head(model, info["missing_keys"], folder_or_id)


def as_masked_lm(model: PreTrainedModel) -> tuple[PreTrainedModel, bool]:
    """An in-memory encoder as its masked-LM class (a headless ``BertModel`` gets the class's
    head, which is then never used), and whether the head is the model's own."""
    if model.base_model is not model:
        return model, True
    wrapped = AutoModelForMaskedLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    result = wrapped.base_model.load_state_dict(model.state_dict(), strict=False)
    _has_head(wrapped, [f"{wrapped.base_model_prefix}.{key}" for key in result.missing_keys], type(model).__name__)
    return wrapped.eval(), False


def _has_head(model: PreTrainedModel, missing: list[str], source: str) -> bool:
    """False when only head weights are missing; an error when the encoder itself is incomplete."""
    prefix = f"{model.base_model_prefix}."
    body = [key for key in missing if key.startswith(prefix) and "pooler" not in key]
    if body:
        raise ModelLoadError(
            f"{source}: the checkpoint lacks {len(body)} weights of the encoder itself "
            f"(e.g. {body[0]}): it is not a complete {type(model).__name__}"
        )
    return not missing


def segment_ids(token_ids: list[int], sep_id: int | None) -> list[int]:
    """Token types of ``[CLS] A [SEP] B [SEP]``: 0 up to the first ``[SEP]``, 1 after it (a
    single text, with one ``[SEP]`` at the end, is all 0), as BERT's pair encoding sets them."""
    if sep_id is None or sep_id not in token_ids:
        return [0] * len(token_ids)
    first = token_ids.index(sep_id)
    return [0 if position <= first else 1 for position in range(len(token_ids))]


def segment_inputs(config: PretrainedConfig, sep_id: int | None, ids: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """``token_type_ids`` [1, T] for an encoder that knows sentence pairs (BERT), as its
    tokenizer's pair encoding sets them; nothing for a model with a single token type."""
    if getattr(config, "type_vocab_size", 1) < 2:
        return {}
    return {"token_type_ids": torch.tensor([segment_ids(ids, sep_id)], dtype=torch.long, device=device)}


def pair_split(token_ids: list[int], sep_id: int | None) -> int | None:
    """Where sentence B starts in ``[CLS] A [SEP] B [SEP]``; None for a single text."""
    types = segment_ids(token_ids, sep_id)
    return types.index(1) if 1 in types else None

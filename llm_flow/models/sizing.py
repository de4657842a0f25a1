"""A model's shape and memory needs read from its config alone, before any weight is loaded.

A user choosing between SmolLM2 and an 8B model wants to know first whether it fits: the
weights, one run of the prompt lengths they care about, the longest prompt that fits. All of it
follows from the config: the parameter count from the model built on PyTorch's ``meta`` device
(shapes only, no memory), the run from `memory.estimate_run_bytes` on the same `ModelInfo` the
loaded model would report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from llm_flow.models.base import ModelInfo
from llm_flow.models.families import architecture_name, is_encoder, is_encoder_decoder, model_class
from llm_flow.models.memory import estimate_peak_bytes, estimate_run_bytes, fitting_tokens

#: Families whose blocks add attention and FFN outputs to the same input (one residual fewer).
_PARALLEL_TYPES = {"gptj", "phi", "cohere", "falcon"}
#: Families that normalise each block's output before the residual add (Gemma 2/3).
_POST_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}
#: Families whose attention does not go through the function that keeps queries and keys (their
#: own attention code, ALiBi): their Runs store every pattern (models/probe.choose_row_storage).
_STORED_PATTERN_TYPES = {"bloom", "gpt_neo", "mpt", "xglm"}
#: Families whose position ids start after the padding id (RoBERTa's offset).
_PADDED_POSITION_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer"}


def info_from_config(
    hf_config: PretrainedConfig, name: str, dtype: str = "float32", device: str = "cpu"
) -> ModelInfo:
    """The `ModelInfo` a load of this config would report, without loading it."""
    n_heads = hf_config.num_attention_heads
    d_model = hf_config.hidden_size
    n_experts = int(getattr(hf_config, "num_local_experts", 0) or getattr(hf_config, "num_experts", 0) or 0)
    per_token = int(getattr(hf_config, "num_experts_per_tok", 0) or 0) if n_experts else 0
    return ModelInfo(
        name=name,
        architecture=architecture_name(hf_config),
        n_layers=hf_config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=_kv_heads(hf_config, n_heads),
        d_model=d_model,
        d_head=int(getattr(hf_config, "head_dim", None) or d_model // n_heads),
        d_mlp=_ffn_width(hf_config, d_model, per_token),
        vocab_size=hf_config.vocab_size,
        n_params=parameter_count(hf_config),
        n_ctx=_context(hf_config),
        parallel_blocks=_parallel(hf_config),
        device=device,
        dtype=dtype,
        post_norms=hf_config.model_type in _POST_NORM_TYPES,
        bidirectional=is_encoder(hf_config),
        post_ln=is_encoder(hf_config),
        n_experts=n_experts,
        experts_per_token=per_token,
        recomputed_rows=_recomputed_rows(hf_config),
    )


def _recomputed_rows(hf_config: PretrainedConfig) -> bool:
    """What the load-time probe will choose, as far as the config tells (Falcon with ALiBi keeps patterns)."""
    stored = hf_config.model_type in _STORED_PATTERN_TYPES or bool(getattr(hf_config, "alibi", False))
    return not (stored or is_encoder_decoder(hf_config))


def parameter_count(hf_config: PretrainedConfig) -> int:
    """Parameters of the model this config builds (tied weights once), counted on the meta
    device: exact for any architecture transformers knows, and costs no memory."""
    auto_class = model_class(architecture_name(hf_config), hf_config)
    with torch.device("meta"):
        model = auto_class.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Footprint:
    """What one model needs: its weights, and per prompt length the run it keeps and the peak
    while it runs; `longest` is the longest prompt whose peak fits next to the weights in
    `budget` bytes (0: not even the weights fit)."""

    info: ModelInfo
    weights: int
    runs: dict[int, tuple[int, int]]  # tokens -> (kept by the run, peak while it runs)
    budget: int
    longest: int

    @property
    def fits_weights(self) -> bool:
        return self.weights <= self.budget


def footprint(info: ModelInfo, lengths: list[int], budget: int) -> Footprint:
    """Weights and runs of `info` at each prompt length, and the longest prompt within `budget`."""
    weights = weights_bytes(info)
    runs = {t: (estimate_run_bytes(info, t), estimate_peak_bytes(info, t)) for t in lengths}
    longest = fitting_tokens(info, budget - weights) if weights < budget else 0
    return Footprint(info, weights, runs, budget, longest)


def weights_bytes(info: ModelInfo) -> int:
    """The checkpoint's parameters in the model's dtype."""
    return info.n_params * torch.empty((), dtype=getattr(torch, info.dtype)).element_size()


def _kv_heads(hf_config: PretrainedConfig, n_heads: int) -> int:
    if getattr(hf_config, "multi_query", False):  # GPT-BigCode, Falcon-7B
        return 1
    return int(getattr(hf_config, "num_key_value_heads", None) or n_heads)


def _ffn_width(hf_config: PretrainedConfig, d_model: int, experts_per_token: int) -> int:
    """Neurons one token uses: the FFN width, or under a mixture of experts its experts' widths
    plus the shared expert's."""
    if experts_per_token:
        width = getattr(hf_config, "moe_intermediate_size", None) or hf_config.intermediate_size
        shared = getattr(hf_config, "shared_expert_intermediate_size", 0) or 0
        return experts_per_token * width + shared
    for field in ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"):
        width = getattr(hf_config, field, None)
        if width:
            return int(width)
    return 4 * d_model  # GPT-2's n_inner=None


def _context(hf_config: PretrainedConfig) -> int:
    """Positions a prompt can use. RoBERTa-style encoders number positions from pad_token_id + 1,
    so that many of their position embeddings are never a token's."""
    positions = int(getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", 0))
    if hf_config.model_type in _PADDED_POSITION_TYPES:
        positions -= (hf_config.pad_token_id or 0) + 1
    return positions


def _parallel(hf_config: PretrainedConfig) -> bool:
    if hf_config.model_type == "gpt_neox":
        return bool(getattr(hf_config, "use_parallel_residual", True))
    if hf_config.model_type == "falcon":
        return bool(getattr(hf_config, "parallel_attn", True))
    return hf_config.model_type in _PARALLEL_TYPES

"""Random-weight models of real shapes, built offline from configs, with a word-level tokenizer.

Every token "w{k}" is one id k, so a prompt of exactly T tokens is easy to write and the
vocabulary matches the model's embedding table exactly.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

import llm_flow

SHAPES = ("gpt2-small", "smollm2-135m")
#: Llama-3.2-1B's shape in bfloat16: memory only (`python -m benchmarks.run_memory --models llama-3.2-1b`),
#: too slow for the routes benchmark's repeated forward passes on a CPU.
LLAMA_1B = "llama-3.2-1b"
#: What the naive reference's memory estimate needs to know, without building the model.
DIMENSIONS = {
    "gpt2-small": {"n_heads": 12, "d_model": 768, "n_layers": 12},
    "smollm2-135m": {"n_heads": 9, "d_model": 576, "n_layers": 30},
}


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Whitespace-split words "w0".."w{V-1}", one id each, no BOS."""
    vocab = {f"w{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0")


def llama_1b_config(attention: str = "eager") -> LlamaConfig:
    """Llama-3.2-1B's published config (1.24 B parameters, 128k context)."""
    return LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=131072,
        attn_implementation=attention,
    )  # fmt: skip


def hf_model(shape: str, attention: str = "eager") -> PreTrainedModel:
    """GPT-2-small or SmolLM2-135M shape, random weights (the same for every call), long enough
    context for T = 4096 (GPT-2's learned positions) or 32,768 (SmolLM2's rotary ones, raised
    from its 8,192 for the long-prompt benchmark). `attention`: "eager" as llm-flow loads
    models, "sdpa" for the plain forward pass it is compared with."""
    torch.manual_seed(0)
    if shape == "gpt2-small":
        config = GPT2Config(
            n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=4096, attn_implementation=attention
        )
        return GPT2LMHeadModel(config).eval()
    if shape == "smollm2-135m":
        config = LlamaConfig(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            attn_implementation=attention,
        )
        return LlamaForCausalLM(config).eval()
    if shape == LLAMA_1B:  # made in bfloat16 directly: a float32 copy would hold 5 GB first
        return LlamaForCausalLM._from_config(llama_1b_config(attention), torch_dtype=torch.bfloat16).eval()
    raise ValueError(f"unknown shape {shape!r}: use one of {', '.join((*SHAPES, LLAMA_1B))}")


def load(shape: str) -> llm_flow.TransparentLlm:
    model = hf_model(shape)
    tokenizer = word_tokenizer(model.config.vocab_size)
    return llm_flow.load_model(model, tokenizer=tokenizer, max_prompt_tokens=None, dtype=model.dtype)


def prompt(n_tokens: int, vocab_size: int) -> str:
    """Exactly `n_tokens` tokens for the word-level tokenizer (ids cycle through a prime stride
    so neighbouring tokens differ)."""
    return " ".join(f"w{(7919 * i) % vocab_size}" for i in range(n_tokens))

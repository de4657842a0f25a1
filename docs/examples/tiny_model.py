"""A tiny random-weight model for the examples whose point is the API, not the model.

Word-level tokens (every word of `WORDS` is one token, anything else is ``[UNK]``), a few layers,
random weights: built in a second, offline, and loadable by plain `transformers` code and by
`llm_flow.load_model(model, tokenizer=tokenizer)` alike. Its attention and predictions mean
nothing; use a real model (``llm_flow.load_model("smollm2-135m")``) to learn about language models.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MarianConfig, MarianMTModel, PreTrainedTokenizerFast,
)  # fmt: skip

SPECIAL = ["<bos>", "<eos>", "[UNK]"]
WORDS = (
    "the a cat sat lay on mat rug dog chased ran to store when mary and john went gave drink "
    "capital of france is paris italy rome one two three four five six seven eight nine ten "
    "it was because tired happy big small , . ! ?"
).split()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased words and punctuation, one token each, with ``<bos>`` put first."""
    vocab = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", unk_token="[UNK]")


def tiny_model(family: str = "gpt2", seed: int = 0):
    """(model, tokenizer): a random 4-layer GPT-2 or Llama (grouped-query attention), or a
    2 + 2-layer Marian translation model (an encoder–decoder), that returns its attention weights
    when asked (``output_attentions=True``)."""
    tokenizer = tiny_tokenizer()
    shape = dict(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, initializer_range=0.3)
    if family == "gpt2":
        config = GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=128, **shape)
        model_class = GPT2LMHeadModel
    elif family == "llama":
        config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=128, **shape)  # fmt: skip
        model_class = LlamaForCausalLM
    elif family == "marian":
        config = MarianConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96,
                              max_position_embeddings=128, decoder_start_token_id=0, pad_token_id=2, **shape)  # fmt: skip
        model_class = MarianMTModel
    else:
        raise ValueError(f"family must be 'gpt2', 'llama' or 'marian' (got {family!r})")
    config._attn_implementation = "eager"  # attention weights are returned only by the eager kernel
    torch.manual_seed(seed)
    return model_class(config).eval(), tokenizer

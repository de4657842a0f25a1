"""Tiny random-weight models of each supported family, saved as local Hugging Face folders.

Built from configs offline (no hub). Weights use a large init range so attention is peaked and
contributions differ a lot between parts: a wrong formula cannot hide behind near-uniform numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "def add(a, b): return a + b  # small programs are text too",
    "Information flows through attention heads and feed-forward blocks.",
]
SPECIALS = ["<bos>", "<eos>", "<unk>"]


def tiny_tokenizer(vocab_size: int = 300, add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences: any prompt tokenises, nothing is downloaded.

    `add_bos` decides whether the tokenizer itself puts ``<bos>`` first (Llama-style) or not
    (GPT-2-style)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    if add_bos:
        bos = tokenizer.token_to_id("<bos>")
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


ENCODER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style tokenizer (lower-cased WordPiece, ``[CLS] A [SEP] B [SEP]`` with token types)
    whose vocabulary is the words and characters of the same few sentences, in a fixed order."""
    pre = pre_tokenizers.BertPreTokenizer()
    words = sorted({w.lower() for text in CORPUS for w, _ in pre.pre_tokenize_str(text)})
    chars = sorted({c for w in words for c in w})
    pieces = [*ENCODER_SPECIALS, *chars, *(f"##{c}" for c in chars), *(w for w in words if len(w) > 1)]
    tokenizer = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.WordPiece()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=2, initializer_range=0.3)


def _small(vocab: int, **extra) -> dict:
    """The shape shared by the Llama-like families: 3 layers, 4 heads, d_model 64."""
    return dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=256, **_common(vocab), **extra,
    )  # fmt: skip


def family_configs(vocab: int) -> dict[str, object]:
    """One small config per architecture family the tests cover."""
    return {
        # learned positions, LayerNorm, biases everywhere
        "gpt2": (GPT2LMHeadModel, GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, **_common(vocab))),
        # RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases
        "llama": (LlamaForCausalLM, LlamaConfig(**_small(vocab, num_key_value_heads=2))),
        # parallel attention and FFN, partial rotary
        "gpt_neox": (
            GPTNeoXForCausalLM,
            GPTNeoXConfig(**_small(vocab, rotary_pct=0.5, use_parallel_residual=True)),
        ),
        # attention (q, k, v) biases, GQA
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**_small(vocab, num_key_value_heads=2))),
        # post-norms on attention and FFN outputs, soft-capping, GQA
        "gemma2": (Gemma2ForCausalLM, Gemma2Config(**_small(vocab, num_key_value_heads=2, head_dim=16))),
    }


FAMILIES = ["gpt2", "llama", "gpt_neox", "qwen2", "gemma2"]


def other_configs(vocab: int) -> dict[str, object]:
    """Families beyond the decoders above: encoders, mixtures of experts, encoder–decoders."""
    from transformers import (
        BartConfig, BartForConditionalGeneration, BertConfig, BertForMaskedLM, BertModel, MarianConfig, MarianMTModel,
        MBartConfig, MBartForConditionalGeneration, MixtralConfig, MixtralForCausalLM, MT5Config,
        MT5ForConditionalGeneration, Qwen2MoeConfig, Qwen2MoeForCausalLM, RobertaConfig, RobertaForMaskedLM,
        T5Config, T5ForConditionalGeneration,
    )  # fmt: skip

    encoder = dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, vocab_size=vocab, initializer_range=0.3, pad_token_id=0,
    )  # fmt: skip
    experts = dict(num_key_value_heads=2, num_experts_per_tok=2)
    return {
        "bert": (BertForMaskedLM, BertConfig(**encoder)),
        "bert_headless": (BertModel, BertConfig(**encoder)),  # a sentence encoder such as MiniLM
        "roberta": (RobertaForMaskedLM, RobertaConfig(**encoder)),
        "mixtral": (MixtralForCausalLM, MixtralConfig(**_small(vocab, num_local_experts=4, **experts))),
        "qwen2_moe": (
            Qwen2MoeForCausalLM,
            Qwen2MoeConfig(**_small(vocab, num_experts=4, moe_intermediate_size=48, shared_expert_intermediate_size=64, **experts)),
        ),
        "t5": (T5ForConditionalGeneration, T5Config(
            vocab_size=vocab, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
            decoder_start_token_id=2, pad_token_id=2, eos_token_id=1,
        )),  # fmt: skip
        "mt5": (MT5ForConditionalGeneration, MT5Config(  # T5's layout with a gated-GELU FFN
            vocab_size=vocab, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
            decoder_start_token_id=2, pad_token_id=2, eos_token_id=1,
        )),  # fmt: skip
        "marian": (MarianMTModel, MarianConfig(
            vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=256,
            decoder_start_token_id=2, pad_token_id=2, eos_token_id=1,
        )),  # fmt: skip
        "bart": (BartForConditionalGeneration, BartConfig(
            vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=256,
            bos_token_id=0, decoder_start_token_id=2, pad_token_id=1, eos_token_id=2, forced_eos_token_id=2,
        )),  # fmt: skip
        "mbart": (MBartForConditionalGeneration, MBartConfig(  # pre-LN, with a final LayerNorm per stack
            vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=256,
            bos_token_id=0, decoder_start_token_id=2, pad_token_id=1, eos_token_id=2, forced_eos_token_id=2,
        )),  # fmt: skip
    }


ENCODERS = ["bert", "bert_headless", "roberta"]


def build_model(family: str, seed: int = 0):
    """The family's random model (any family of `family_configs` or `other_configs`) and a tokenizer."""
    tokenizer = tiny_wordpiece_tokenizer() if family in ENCODERS else tiny_tokenizer()
    configs = {**family_configs(len(tokenizer)), **other_configs(len(tokenizer))}
    model_class, config = configs[family]
    torch.manual_seed(seed)
    return model_class(config).eval(), tokenizer


def save_tiny_model(family: str, folder: Path, seed: int = 0, random_biases: bool = False) -> Path:
    """Build the family's random model and save it with the tiny tokenizer as a local folder.

    `transformers` initialises biases to zero, so a bias that belongs to no part (b_O, the FFN
    output bias) would go unseen: `random_biases` draws every bias at random instead."""
    model, tokenizer = build_model(family, seed)
    if random_biases:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(".bias"):
                    parameter.normal_(0.0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_models(families: list[str], root: Path) -> dict[str, Path]:
    """`save_tiny_model` for each family, in sub-folders of `root`."""
    return {family: save_tiny_model(family, root / family) for family in families}

"""Long prompts at the cost of a plain forward pass (issue 21): the Run keeps queries and keys and
rebuilds any attention row on demand; its forward pass attends with SDPA; logits are computed
when asked. Checked against plain `transformers` with eager attention (``output_attentions``),
an independent computation of the same weights."""

from __future__ import annotations

import copy

import pytest
import torch

import llm_flow
from llm_flow.models.query_keys import QueryKeyPattern
from llm_flow.models.run import CausalPattern
from tests.conftest import PROMPT
from tests.tiny_models import build_model, family_configs, tiny_tokenizer

LONG = "When Mary and John went to the store, John gave a drink to Mary. " * 2
DECODERS = ["gpt2", "llama", "gpt_neox", "qwen2", "gemma2"]


def _windowed(family: str, window: int):
    """A tiny model whose sliding window (every other layer) is shorter than the prompt."""
    tokenizer = tiny_tokenizer()
    model_class, config = family_configs(len(tokenizer))[family] if family == "gemma2" else (None, None)
    if family == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model_class = Gemma3ForCausalLM
        config = Gemma3TextConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
            initializer_range=0.3, query_pre_attn_scalar=24, bos_token_id=0, eos_token_id=1, pad_token_id=2,
            layer_types=["sliding_attention", "full_attention"] * 2,
        )  # fmt: skip
    config.sliding_window = window
    torch.manual_seed(0)
    return model_class(config).eval(), tokenizer


def _cases():
    for family in [*DECODERS, "bert", "bert_headless", "roberta", "mixtral", "qwen2_moe"]:
        yield family, lambda family=family: build_model(family)
    for family in ("gemma2", "gemma3"):
        yield f"{family}-window-5", lambda family=family: _windowed(family, 5)


CASES = dict(_cases())


@pytest.fixture(scope="module", params=list(CASES))
def loaded(request):
    """(model, reference): the loaded model and an untouched eager copy of the same weights."""
    hf_model, tokenizer = CASES[request.param]()
    reference = copy.deepcopy(hf_model)
    reference.config._attn_implementation = "eager"
    return llm_flow.load_model(hf_model, tokenizer=tokenizer), reference


@pytest.fixture(scope="module", params=[name for name in CASES if name.endswith("window-5")])
def windowed(request):
    hf_model, tokenizer = CASES[request.param]()
    return llm_flow.load_model(hf_model, tokenizer=tokenizer)


def test_rebuilt_rows_are_the_models_own_eager_attention(loaded):
    model, reference = loaded
    assert model.info.recomputed_rows, "the probe chose rows rebuilt from queries and keys"
    run = model.run(LONG)
    with torch.no_grad():
        out = reference(run.tokens[None], output_attentions=True)
    spread = 0.0
    for layer in range(run.n_layers):
        pattern = run.layer(layer).pattern
        assert isinstance(pattern, QueryKeyPattern)
        expected = out.attentions[layer][0]  # [H, T, T]
        torch.testing.assert_close(pattern.dense(), expected, atol=3e-5, rtol=0)
        positions = torch.tensor([run.n_tokens - 1, 3, 0])
        torch.testing.assert_close(pattern.rows(positions, run.n_tokens), expected[:, positions].transpose(0, 1), atol=3e-5, rtol=0)
        spread = max(spread, float(expected.max() - expected.min()))
    assert spread > 0.5, "peaked rows: an error in scale, mask or window would show far above the tolerance"


def test_sliding_windows_hide_what_the_model_hides(windowed):
    """Sliding layers read the last 5 sources only (the rows above equal the model's own); the
    global layers read all of them."""
    run = windowed.run(LONG)
    last = run.n_tokens - 1
    windows = [layer.pattern.rule.window for layer in run.layers]
    assert 5 in windows and None in windows
    for layer in run.layers:
        row = layer.pattern.row(last)  # [H, T]
        hidden = float(row[:, : last - 4].abs().max())
        assert hidden == 0.0 if layer.pattern.rule.window == 5 else hidden > 1e-3


def test_logits_of_a_position_are_the_plain_forward_passs(loaded):
    model, reference = loaded
    if model.info.no_lm_head:
        pytest.skip("a sentence encoder has no head of its own (the input embeddings serve)")
    run = model.run(LONG)
    with torch.no_grad():
        expected = reference(run.tokens[None]).logits[0]
    for position in (0, 5, -1):
        torch.testing.assert_close(run.position_logits(position), expected[position], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run.rows_logits([2, 7]), expected[[2, 7]], atol=1e-4, rtol=1e-4)
    assert float(expected[-1].max() - expected[-1].min()) > 1.0


def test_attention_that_cannot_be_rebuilt_keeps_stored_patterns():
    """GPT-Neo's local attention has its own code and no scale: its rows are kept as today."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tokenizer = tiny_tokenizer()
    config = GPTNeoConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
        window_size=4, max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    hf_model = GPTNeoForCausalLM(config).eval()
    reference = copy.deepcopy(hf_model)
    model = llm_flow.load_model(hf_model, tokenizer=tokenizer)
    assert not model.info.recomputed_rows
    run = model.run(PROMPT)
    assert all(isinstance(layer.pattern, CausalPattern) for layer in run.layers)
    with torch.no_grad():
        out = reference(run.tokens[None], output_attentions=True)
    for layer in range(run.n_layers):
        torch.testing.assert_close(run.layer(layer).pattern.dense(), out.attentions[layer][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(run.position_logits(-1), out.logits[0, -1], atol=1e-4, rtol=1e-4)


def test_the_pass_leaves_the_model_as_it_was(tiny_models):
    """The fast pass switches the attention function for its own duration only: generation and
    hooked passes afterwards see the eager attention and the bridge's own hooks."""
    model = tiny_models("llama")
    model.run(PROMPT)
    assert model.hf_model.config._attn_implementation == "eager"
    assert all("forward" not in vars(block.attn) for block in model.bridge.blocks)
    seen = []
    model.bridge.run_with_hooks(
        model.run(PROMPT).tokens[None], fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: seen.append(t.shape))]
    )
    assert seen and seen[0][-1] == seen[0][-2]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_route_rebuilds_each_attention_row_once(tiny_models, monkeypatch, family):
    """The rows a route needs are rebuilt from queries and keys in one batch per layer and kept
    with the Run (as contribution rows): the same route again rebuilds none, a route to another
    target rebuilds only the rows it adds."""
    from llm_flow.routes.contributions import AttentionRow

    rebuilt: list[list[int]] = []  # one entry per batch: its query positions
    real = QueryKeyPattern._weights

    def counting(self, positions, n_sources):
        rebuilt.append(positions.tolist())
        return real(self, positions, n_sources)

    monkeypatch.setattr(QueryKeyPattern, "_weights", counting)
    run = tiny_models(family).run(LONG)
    assert isinstance(run.layer(0).pattern, QueryKeyPattern)
    rebuilt.clear()  # loading the model (first use) checks rebuilt rows against stored ones on a probe prompt

    def kept() -> set[tuple[int, int]]:
        return {(key.layer, key.position) for key in run.derived_store.keys() if isinstance(key, AttentionRow)}

    llm_flow.build_graph(run, -1, threshold=0.02)
    assert len(rebuilt) <= run.n_layers, "one batch of rows per layer"
    assert sum(map(len, rebuilt)) == len(kept()) > run.n_layers, "every row rebuilt once, and kept"
    rebuilt.clear()
    llm_flow.build_graph(run, -1, threshold=0.02)
    llm_flow.build_graph(run, -1, threshold=0.05)
    assert rebuilt == [], "the same route rebuilt attention rows"
    before = kept()
    llm_flow.build_graph(run, run.n_tokens // 2, threshold=0.02)
    assert sum(map(len, rebuilt)) == len(kept() - before) > 0

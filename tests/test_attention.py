"""Attention views (head, model, neuron) against plain `transformers`, on every tested family.

Independent computations: the eager attention weights `transformers` returns with
``output_attentions=True``; value vectors and W_O read from the Hugging Face modules by forward
hooks and weights; post-rotary queries and keys recorded from `transformers`' own
``apply_rotary_pos_emb``. Nothing here goes through TransformerLens.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
)

import llm_flow
from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.figures.attention import head_view_figure, model_view_figure, neuron_view_figure
from llm_flow.models.derived import DerivedStore
from llm_flow.views import attention_scores, block_pass
from llm_flow.views.attention import TokenWindow, attention_view, head_view, model_view, token_window
from llm_flow.views.attention_scores import QueryKeysOf, neuron_view, query_keys
from tests.conftest import PROMPT
from tests.reference import reference_contributions, reference_layers
from tests.tiny_models import FAMILIES, _small, tiny_tokenizer

ROTARY = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2", "gpt_neox": "gpt_neox"}


def hf_model(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    return model.eval().requires_grad_(False)


def hf_attentions(model, token_ids) -> list[torch.Tensor]:
    """Per layer [H, T, T], as transformers computes them."""
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True)
    return [a[0] for a in out.attentions]


@pytest.fixture(scope="module")
def family_runs(tiny_models, tiny_folders):
    """(run, HF model, HF attentions) per family, built once."""
    cache = {}

    def get(family):
        if family not in cache:
            run = tiny_models(family).run(PROMPT)
            model = hf_model(tiny_folders[family])
            cache[family] = (run, model, hf_attentions(model, run.tokens.tolist()))
        return cache[family]

    return get


# --- patterns, norms, ALTI ---------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_patterns_equal_transformers_output_attentions(family_runs, family):
    run, _, expected = family_runs(family)
    view = model_view(run)  # every layer and head, whole prompt
    assert view.weights.shape == (run.n_layers, len(expected[0]), run.n_tokens, run.n_tokens)
    for layer, pattern in enumerate(expected):
        np.testing.assert_allclose(view.weights[layer], pattern.numpy(), atol=1e-5)
    one = head_view(run, 1, heads=[2])
    np.testing.assert_allclose(one.weights[0, 0], expected[1][2].numpy(), atol=1e-5)


def _values_and_w_o(model, family, token_ids):
    """v [T, n_kv, d_head] per layer (value bias included) and W_O [H, d_head, d_model], read
    from the Hugging Face modules: projection outputs by forward hooks, W_O from weights."""
    cfg = model.config
    if family == "gpt2":
        layers = model.transformer.h
        hooked = [layer.attn.c_attn for layer in layers]
    elif family == "gpt_neox":
        layers = model.gpt_neox.layers
        hooked = [layer.attention.query_key_value for layer in layers]
    else:
        layers = model.model.layers
        hooked = [layer.self_attn.v_proj for layer in layers]
    outputs = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out[0])) for m in hooked]
    with torch.no_grad():
        model(torch.tensor([token_ids]))
    for handle in handles:
        handle.remove()
    d, n_heads = cfg.hidden_size, cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or d // n_heads
    result = []
    for layer, out in zip(layers, outputs):
        T = out.shape[0]
        if family == "gpt2":
            v = out[:, 2 * d :].reshape(T, n_heads, d_head)
            w_o = layer.attn.c_proj.weight.reshape(n_heads, d_head, d)  # Conv1D stores [in, out]
        elif family == "gpt_neox":
            v = out.reshape(T, n_heads, 3 * d_head)[..., 2 * d_head :]
            w_o = layer.attention.dense.weight.T.reshape(n_heads, d_head, d)
        else:
            v = out.reshape(T, -1, d_head)
            w_o = layer.self_attn.o_proj.weight.T.reshape(n_heads, d_head, d)
        result.append((v, w_o))
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_norm_weighting_is_attention_times_l2_norm_of_value_through_w_o(family_runs, family):
    run, model, patterns = family_runs(family)
    view = model_view(run, weighting="norm")
    for layer, (v, w_o) in enumerate(_values_and_w_o(model, family, run.tokens.tolist())):
        n_heads = w_o.shape[0]
        group = n_heads // v.shape[1]
        norms = torch.stack(
            [torch.linalg.vector_norm(v[:, h // group] @ w_o[h], dim=-1) for h in range(n_heads)]
        )  # [H, T(source)]
        expected = patterns[layer] * norms[:, None, :]
        np.testing.assert_allclose(view.weights[layer], expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_the_output_gram_is_made_once_per_model_from_its_w_o(family_runs, family):
    """``W_O[h] W_O[h]ᵀ`` as plain transformers' weights give it, kept by the model that owns them:
    the next prompt's norm weighting reads the same tensor instead of making it again."""
    run, model, _ = family_runs(family)
    for layer, (_, w_o) in enumerate(_values_and_w_o(model, family, run.tokens.tolist())):
        gram = run.model.attention_output_gram(layer)
        w_o = w_o.double()
        torch.testing.assert_close(gram.double(), w_o @ w_o.transpose(1, 2), rtol=1e-5, atol=1e-6)
        assert run.model.attention_output_gram(layer) is gram


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])
def test_alti_weighting_is_the_contribution_of_each_source_through_each_head(family_runs, tiny_folders, family):
    """Against the float64 reference of tests/reference.py: part vectors from hooks on the
    transformers modules and the proximity formula written out."""
    run, _, _ = family_runs(family)
    view = model_view(run, weighting="alti")
    for layer, reference in enumerate(reference_layers(str(tiny_folders[family]), run.tokens.tolist())):
        c_heads = reference_contributions(reference, run.parallel)[0]  # [T, T, H]
        assert c_heads.max() > 0.05, "a check on all-zero contributions would prove nothing"
        np.testing.assert_allclose(view.weights[layer], c_heads.permute(2, 0, 1).numpy(), atol=1e-4)


# --- neuron view -------------------------------------------------------------------------------


def _recorded_rotary(monkeypatch, model, family, token_ids):
    """Post-rotary (q, k) per layer, [H, T, d] and [n_kv, T, d], recorded from transformers' own
    apply_rotary_pos_emb; GPT-2 (no rotation) from its fused projection."""
    if family == "gpt2":
        outputs = []
        handles = [b.attn.c_attn.register_forward_hook(lambda _m, _a, out: outputs.append(out[0])) for b in model.transformer.h]
        with torch.no_grad():
            model(torch.tensor([token_ids]))
        for handle in handles:
            handle.remove()
        d, n_heads = model.config.n_embd, model.config.n_head
        split = [out.reshape(len(token_ids), 3, n_heads, d // n_heads).permute(1, 2, 0, 3) for out in outputs]
        return [(s[0], s[1]) for s in split]
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    real = module.apply_rotary_pos_emb
    recorded = []

    def recording(q, k, cos, sin, *args, **kwargs):
        out = real(q, k, cos, sin, *args, **kwargs)
        recorded.append((out[0][0].detach(), out[1][0].detach()))
        return out

    with monkeypatch.context() as patch:  # undone before TransformerLens (which calls it too) runs
        patch.setattr(module, "apply_rotary_pos_emb", recording)
        with torch.no_grad():
            model(torch.tensor([token_ids]))
    return recorded


@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_view_uses_the_models_post_rotary_queries_and_keys(family_runs, monkeypatch, family):
    run, model, _ = family_runs(family)
    recorded = _recorded_rotary(monkeypatch, model, family, run.tokens.tolist())
    query = run.n_tokens - 3
    for layer, (q, k) in enumerate(recorded):
        n_heads, n_kv = q.shape[0], k.shape[0]
        for head in range(n_heads):
            view = neuron_view(run, layer, head, query)
            assert view.kv_head == head // (n_heads // n_kv)
            np.testing.assert_allclose(view.query_vector, q[head, query].numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(view.keys, k[view.kv_head, : query + 1].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_view_softmax_reproduces_the_pattern(family_runs, family):
    run, _, patterns = family_runs(family)
    for layer, pattern in enumerate(patterns):
        for head in range(pattern.shape[0]):
            for query in (0, 5, run.n_tokens - 1):
                view = neuron_view(run, layer, head, query)
                np.testing.assert_allclose(view.probabilities, pattern[head, query, : query + 1].numpy(), atol=1e-5)
                assert view.max_error < 1e-5
                # the displayed arithmetic is consistent: sum of q ⊙ k is q.k, then scale and cap
                np.testing.assert_allclose(view.products.sum(-1), view.dots, rtol=1e-5, atol=1e-5)
                scores = view.dots * view.scale
                if view.softcap is not None:
                    scores = view.softcap * np.tanh(scores / view.softcap)
                np.testing.assert_allclose(view.scores, scores, rtol=1e-5, atol=1e-5)
    gemma = neuron_view(family_runs("gemma2")[0], 0, 0, 3)
    assert gemma.softcap == 50.0 and gemma.scale == pytest.approx(256**-0.5)  # query_pre_attn_scalar


def test_neuron_view_applies_a_sliding_window(tmp_path):
    """Gemma 2 with a 4-token window on its sliding layers: masked sources get -inf and no weight."""
    tokenizer = tiny_tokenizer()
    config = Gemma2Config(**_small(len(tokenizer), num_key_value_heads=2, head_dim=16, sliding_window=4))
    torch.manual_seed(1)
    Gemma2ForCausalLM(config).eval().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    run = llm_flow.load_model(str(tmp_path)).run(PROMPT)
    patterns = hf_attentions(hf_model(tmp_path), run.tokens.tolist())
    query = run.n_tokens - 1
    for layer, pattern in enumerate(patterns):
        view = neuron_view(run, layer, 1, query)
        np.testing.assert_allclose(view.probabilities, pattern[1, query].numpy(), atol=1e-5)
        masked = ~np.isfinite(view.scores)
        assert masked.sum() == (query + 1 - 4 if view.sliding_window == 4 else 0)
        assert (view.probabilities[masked] == 0).all()
    assert {query_keys(run, l).sliding_window for l in range(run.n_layers)} == {4, None}


@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_view_of_a_layer_computes_no_other_layer_nor_its_attention_or_mlp(family_runs, family):
    """Block l runs alone on the Run's resid_pre and stops at q and k: only its input norm
    finishes; no other block runs, and neither attention nor MLP of block l. (Gemma 2's full
    layer 1 takes its inputs from the first full block, itself: block 0, sliding, runs whole.)"""
    run, _, _ = family_runs(family)
    bridge = run.model.bridge
    finished: list[str] = []
    handles = [
        module.register_forward_hook(lambda *_, name=f"{i}.{part}": finished.append(name))
        for i, block in enumerate(bridge.blocks)
        for part, module in (("ln1", block.ln1), ("attn", block.attn), ("mlp", block.mlp), ("block", block))
    ]
    run.derived_store.clear(QueryKeysOf)
    try:
        for layer in (run.n_layers - 1, 1):
            finished.clear()
            neuron_view(run, layer, 0, run.n_tokens - 1)
            whole = ["0.ln1", "0.attn", "0.mlp", "0.block"] if (family, layer) == ("gemma2", 1) else []
            assert sorted(finished) == sorted(whole + [f"{layer}.ln1"])
            finished.clear()
            neuron_view(run, layer, 3, 4)  # another head and query of the layer: nothing runs
            assert finished == []
    finally:
        for handle in handles:
            handle.remove()
    kept = sorted(k.layer for k in run.derived_store.keys() if isinstance(k, QueryKeysOf))
    assert kept == [1, run.n_layers - 1]  # only the layers asked for


def _tiny_gemma3(folder):
    """Gemma 3: sliding layers rotate with base 10^4, the full layer (1) with base 10^6."""
    tokenizer = tiny_tokenizer()
    layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    config = Gemma3TextConfig(**_small(len(tokenizer), num_key_value_heads=2, head_dim=16, sliding_window=4,
                                       layer_types=layer_types))  # fmt: skip
    torch.manual_seed(2)
    Gemma3ForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return llm_flow.load_model(str(folder)).run(PROMPT), hf_model(folder)


def test_neuron_view_on_layers_with_their_own_rotary_tables(tmp_path, monkeypatch):
    """Gemma 3 hands its full layers other cos/sin than its first (sliding) block: the first
    block's inputs do not reproduce layer 1, which must then use a block of its own type, or its
    own inputs, and still equal transformers' weights."""
    run, model = _tiny_gemma3(tmp_path)
    patterns = hf_attentions(model, run.tokens.tolist())
    first_inputs = attention_scores._capture(run, 1, 0)
    assert attention_scores._layer_error(run, first_inputs) > 1e-2  # the wrong rotary shows
    query = run.n_tokens - 1

    def check_all_layers():
        run.derived_store.clear(QueryKeysOf)
        for layer, pattern in enumerate(patterns):
            for head in range(pattern.shape[0]):
                view = neuron_view(run, layer, head, query)
                np.testing.assert_allclose(view.probabilities, pattern[head, query].numpy(), atol=1e-5)

    check_all_layers()  # through the first full block's inputs (the config's layer types)
    monkeypatch.setattr(block_pass, "input_sources", lambda run, layer: list(dict.fromkeys((0, layer))))
    check_all_layers()  # block 0's inputs first: refused by the layer check, then the layer's own


def test_neuron_view_refuses_what_it_cannot_reproduce(family_runs):
    shared, _, _ = family_runs("llama")
    qk = query_keys(shared, 2)
    run = replace(shared, derived_store=DerivedStore())  # the same activations, nothing derived yet
    run.derived_store.put(QueryKeysOf(2), replace(qk, scale=qk.scale * 3))  # a wrong scale must be caught
    with pytest.raises(UnsupportedModelError, match="cannot reproduce layer 2's attention weights"):
        neuron_view(run, 2, 0, run.n_tokens - 1)


def test_neuron_view_window_and_top_k_choose_what_is_shown(family_runs):
    run, _, patterns = family_runs("qwen2")
    query = run.n_tokens - 1
    full = neuron_view(run, 1, 3, query)
    windowed = neuron_view(run, 1, 3, query, window=token_window(run, query, 6))
    assert windowed.positions.tolist() == list(range(query - 5, query + 1))
    np.testing.assert_allclose(windowed.probabilities, full.probabilities[-6:])
    top = neuron_view(run, 1, 3, query, top_k=3)
    expected = np.sort(np.argsort(-patterns[1][3, query, : query + 1].numpy())[:3])
    assert top.positions.tolist() == expected.tolist()
    assert top.hidden_weight == pytest.approx(1 - full.probabilities[expected].sum(), abs=1e-6)
    with pytest.raises(ArgumentError, match="has no source for query 2"):
        neuron_view(run, 1, 3, 2, window=TokenWindow(5, 9))


# --- windows, top-k, aggregation, sentence pairs -----------------------------------------------


def test_token_window_stays_inside_the_prompt(family_runs):
    run, _, _ = family_runs("llama")
    T = run.n_tokens
    assert token_window(run, 0, 5) == TokenWindow(0, 5)
    assert token_window(run, -1, 5) == TokenWindow(T - 5, T)
    assert token_window(run, 10, 5) == TokenWindow(8, 13)
    assert token_window(run, 3, 10 * T) == TokenWindow(0, T)
    assert token_window(run) == TokenWindow(0, T)


def test_window_is_a_block_of_the_full_pattern_with_the_rest_summed(family_runs):
    run, _, _ = family_runs("llama")
    window = token_window(run, 12, 6)
    for weighting in ("attention", "norm", "alti"):
        full = head_view(run, 1, weighting=weighting)
        part = head_view(run, 1, weighting=weighting, window=window)
        rows = slice(window.start, window.stop)
        # rows are rebuilt per request from queries and keys: float32 products of a block of 6
        # queries and of the whole layer may round differently (1e-7 relative)
        np.testing.assert_allclose(part.weights[0], full.weights[0][:, rows, rows], atol=1e-7, rtol=1e-6)
        np.testing.assert_allclose(part.outside[0], full.weights[0][:, rows, : window.start].sum(-1), rtol=1e-6)
    attention = head_view(run, 1, window=window)
    np.testing.assert_allclose(attention.weights[0].sum(-1) + attention.outside[0], 1.0, atol=1e-5)


def test_top_k_keeps_the_k_strongest_sources_of_each_row(family_runs):
    run, _, patterns = family_runs("gpt2")
    view = head_view(run, 2, top_k=2)
    expected = patterns[2].numpy()
    assert ((view.weights[0] > 0).sum(-1) <= 2).all()
    for head in range(expected.shape[0]):
        for query in range(run.n_tokens):
            kept = np.flatnonzero(view.weights[0, head, query])
            strongest = np.argsort(-expected[head, query])[: len(kept)]
            assert set(kept) == set(strongest)
            np.testing.assert_allclose(view.weights[0, head, query, kept], expected[head, query, kept], atol=1e-5)


def test_head_aggregation_is_mean_or_max_of_the_chosen_heads(family_runs):
    run, _, patterns = family_runs("gemma2")
    chosen = [0, 2, 3]
    expected = patterns[0][chosen].numpy()
    mean = head_view(run, 0, heads=chosen, aggregate="mean")
    top = head_view(run, 0, heads=chosen, aggregate="max")
    assert mean.head_labels == ("mean of 3 heads",) and top.weights.shape[1] == 1
    np.testing.assert_allclose(mean.weights[0, 0], expected.mean(0), atol=1e-5)
    np.testing.assert_allclose(top.weights[0, 0], expected.max(0), atol=1e-5)


def test_sentence_pair_parts_split_the_pattern(family_runs):
    run, _, _ = family_runs("gpt_neox")
    split = 7
    full = head_view(run, 1).weights[0]
    parts = {part: head_view(run, 1, split=split, part=part).weights[0] for part in ("A->A", "B->A", "B->B", "A->B")}
    in_b = np.arange(run.n_tokens) >= split
    assert not parts["A->A"][:, in_b].any() and not parts["A->A"][:, :, in_b].any()
    assert not parts["B->A"][:, ~in_b].any() and not parts["B->A"][:, :, in_b].any()
    assert not parts["B->B"][:, ~in_b].any() and not parts["B->B"][:, :, ~in_b].any()
    assert not parts["A->B"].any()  # a causal model never lets sentence A read sentence B
    np.testing.assert_allclose(parts["A->A"] + parts["B->A"] + parts["B->B"], full, atol=1e-7)
    assert head_view(run, 1, split=split).segment(split - 1) == "A"


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda run: head_view(run, 7), "layer 7 is out of range: the model has 3 layers"),
        (lambda run: head_view(run, 0, heads=[4]), "head 4 is out of range: the model has 4 heads"),
        (lambda run: neuron_view(run, 0, 9, 0), "head 9 is out of range"),
        (lambda run: neuron_view(run, 0, 0, 500), "target position 500 is out of range"),
        (lambda run: neuron_view(run, 5, 0, 0), "layer 5 is out of range"),
        (lambda run: token_window(run, 500, 4), "target position 500 is out of range"),
        (lambda run: token_window(run, 0, 0), "the window size \\(tokens\\) must be at least 1"),
        (lambda run: head_view(run, 0, weighting="gradient"), "unknown weighting 'gradient'"),
        (lambda run: head_view(run, 0, top_k=0), "top-k must be at least 1"),
        (lambda run: head_view(run, 0, aggregate="sum"), "unknown head aggregation 'sum'"),
        (lambda run: head_view(run, 0, split=0), "split 0 must be the position of sentence B's first token"),
        (lambda run: head_view(run, 0, part="B->B"), "needs a split point"),
        (lambda run: head_view(run, 0, split=3, part="C->A"), "unknown sentence-pair part"),
        (lambda run: attention_view(run, layers=[]), "choose at least one layer and one head"),
    ],
)
def test_bad_arguments_say_what_to_fix(family_runs, call, message):
    run, _, _ = family_runs("llama")
    with pytest.raises(ArgumentError, match=message):
        call(run)


# --- figures -----------------------------------------------------------------------------------


def test_head_view_figure_draws_one_line_per_kept_weight(family_runs):
    run, _, _ = family_runs("llama")
    view = head_view(run, 1, top_k=3)
    fig = head_view_figure(view)
    lines = [t for t in fig.data if t.mode == "lines"]
    drawn = [t for t in lines if t.showlegend is False]  # the others only carry the legend entries
    assert sum(np.isnan(np.asarray(t.x)).sum() for t in drawn) == (view.weights >= 0.01).sum()  # 1% of full
    assert [t.name for t in lines if t.showlegend is not False] == [f"head {h}" for h in range(4)]
    assert {t.legendgroup for t in lines} == {f"head {h}" for h in range(4)}  # one legend toggle per head
    tokens = [t for t in fig.data if t.mode == "markers+text"]
    assert [list(t.customdata) for t in tokens] == [list(range(run.n_tokens))] * 2
    focused = head_view_figure(view, focus=10)
    starts = np.concatenate([np.asarray(t.y)[0::3] for t in focused.data if t.mode == "lines" and t.showlegend is False])
    assert set(starts.tolist()) == {-10.0} and len(starts) == (view.weights[0, :, 10] >= 0.01).sum()
    with pytest.raises(ArgumentError, match="one layer"):
        head_view_figure(model_view(run))


def test_only_the_head_views_html_carries_the_hover_script(family_runs):
    """Hover isolation is the exported page's script (tests/test_browser_attention_export.py runs
    it); the copy `save_figure` styles keeps it, and it names the page's plot."""
    from llm_flow.export import figure_bytes

    run, _, _ = family_runs("llama")
    page = figure_bytes(head_view_figure(head_view(run, 1, top_k=3)), "html", title="head").decode()
    assert "gd.on('plotly_hover'" in page and "document.getElementById('llm-flow-figure')" in page
    assert "gd.on('plotly_hover'" not in figure_bytes(model_view_figure(model_view(run)), "html").decode()


def test_model_view_figure_is_one_mosaic_with_click_targets(family_runs):
    run, _, _ = family_runs("qwen2")
    view = model_view(run, heads=[1, 3], window=token_window(run, -1, 8), weighting="alti")
    fig = model_view_figure(view)
    heatmap = fig.data[0]
    z = np.asarray(heatmap.z)
    assert z.shape == (3 * 8, 2 * 8)
    np.testing.assert_array_equal(z[1 * 8 + 2, 1 * 8 + 5], view.weights[1, 1, 2, 5])
    assert [list(c) for c in fig.data[1].customdata] == [[l, h] for l in range(3) for h in (1, 3)]


def test_neuron_view_figure_shows_each_step(family_runs):
    run, _, _ = family_runs("gemma2")
    view = neuron_view(run, 1, 2, 9)
    fig = neuron_view_figure(view)
    assert len(fig.data) == 5
    np.testing.assert_allclose(np.asarray(fig.data[4].z)[:, 0], view.probabilities, atol=1e-7)
    assert any("50·tanh(q·k × 0.0625/50)" in a.text for a in fig.layout.annotations)  # Gemma 2's soft-cap


def test_figures_stay_small_for_a_long_prompt(tiny_models):
    model = tiny_models("llama")
    run = model.run(" ".join(["one two three four"] * 15))  # ~200 tokens with the tiny tokenizer
    assert run.n_tokens > 150
    head = head_view_figure(head_view(run, 2, top_k=3)).to_json()
    grid = model_view_figure(model_view(run, window=token_window(run, -1, 32))).to_json()
    neuron = neuron_view_figure(neuron_view(run, 2, 1, -1)).to_json()
    assert len(head) < 1_000_000 and len(grid) < 500_000 and len(neuron) < 500_000


def test_views_too_big_to_draw_are_refused_with_what_to_change(family_runs, monkeypatch):
    from llm_flow.figures import attention as figures
    from llm_flow.views import attention as views

    run, _, _ = family_runs("llama")
    monkeypatch.setattr(figures, "MAX_LINES", 50)
    monkeypatch.setattr(figures, "MAX_CELLS", 1000)
    with pytest.raises(ArgumentError, match="the head view would draw .* lines .*: set top-k sources"):
        head_view_figure(head_view(run, 1))
    assert head_view_figure(head_view(run, 1, heads=[0], top_k=1))  # within the budget
    with pytest.raises(ArgumentError, match=r"a window of at most 9 tokens"):
        model_view_figure(model_view(run, window=token_window(run, -1, 20)))
    monkeypatch.setattr(views, "MAX_ROW_ELEMENTS", 100)
    with pytest.raises(ArgumentError, match="too much to compute at once"):
        model_view(run)

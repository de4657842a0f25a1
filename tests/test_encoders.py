"""Encoders (BERT, RoBERTa, MiniLM-style sentence encoders): bidirectional attention everywhere,
post-LN blocks linearised per token, the [MASK] prediction explained (issue 20, item 1).
Checked against plain transformers modules in float64 (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

import llm_flow
from tests.reference import assert_layer_matches, reference_layers, reference_neurons
from tests.tiny_models import ENCODERS, save_tiny_models

PROMPT = "The capital of France is [MASK]. Mary gave a drink to John."
ATOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_tiny_models(ENCODERS, tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="module")
def runs(folders):
    return {family: llm_flow.load_model(str(folder)).run(PROMPT) for family, folder in folders.items()}


@pytest.fixture(scope="module")
def references(folders, runs):
    return {family: reference_layers(str(folders[family]), runs[family].tokens.tolist()) for family in ENCODERS}


def hf_output(folder, run):
    model = AutoModelForMaskedLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        return model(run.tokens[None], output_attentions=True, output_hidden_states=True)


@pytest.mark.parametrize("family", ENCODERS)
def test_the_model_is_read_as_a_bidirectional_post_ln_encoder(runs, family):
    run = runs[family]
    info = run.model.info
    assert info.bidirectional and info.post_ln
    assert info.no_lm_head == (family == "bert_headless")
    assert run.str_tokens[0] == "[CLS]" and run.str_tokens[-1] == "[SEP]" and "[MASK]" in run.str_tokens


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_states_patterns_and_mask_prediction_are_the_models_own(runs, folders, family):
    run = runs[family]
    out = hf_output(folders[family], run)
    for layer in range(run.n_layers):
        torch.testing.assert_close(run.layer(layer).resid_pre, out.hidden_states[layer][0], atol=1e-5, rtol=1e-5)
        pattern = run.layer(layer).pattern.dense()
        torch.testing.assert_close(pattern, out.attentions[layer][0], atol=1e-6, rtol=1e-5)
        assert float(pattern[:, 0, 1:].sum()) > 0.1  # the first token reads tokens to its right
    torch.testing.assert_close(run.logits, out.logits[0], atol=1e-4, rtol=1e-4)
    mask = run.str_tokens.index("[MASK]")
    assert int(run.logits[mask].argmax()) == int(out.logits[0, mask].argmax())


def test_without_a_head_predictions_use_the_input_embeddings(runs, folders):
    """A sentence encoder's random MLM head is never read: logits are the last state against W_E."""
    run = runs["bert_headless"]
    embeddings = run.model.hf_model.get_input_embeddings().weight.detach()
    expected = run.layer(-1).resid_post @ embeddings.T
    torch.testing.assert_close(run.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run.model.unembed(run.layer(-1).resid_post, normalize=False), expected)


@pytest.mark.parametrize("family", ENCODERS)
def test_contributions_match_the_independent_reference(runs, references, family):
    run = runs[family]
    for layer, ref in enumerate(references[family]):
        assert_layer_matches(run, layer, ref, ATOL)
        c_heads, _ = llm_flow.attention_contributions(run, layer)
        upper = torch.triu(c_heads.sum(-1), diagonal=1)
        assert float(upper.sum()) > 0.05 * run.n_tokens  # sources after the query carry real shares
        for position in (0, run.n_tokens - 1):
            ref_neurons, ref_rest = reference_neurons(ref, position, parallel=False)
            c_neurons, c_rest = llm_flow.neuron_contributions(run, layer, position)
            torch.testing.assert_close(c_neurons.double(), ref_neurons, atol=ATOL, rtol=0)
            assert abs(c_rest - float(ref_rest)) < ATOL


@pytest.mark.parametrize("family", ENCODERS)
def test_parts_reconstruct_every_state(runs, references, family):
    """The linearised norm: residual, head parts and the biases add up to resid_mid exactly."""
    from llm_flow.routes.contributions import attention_parts, ffn_parts

    run = runs[family]
    for layer, ref in enumerate(references[family]):
        for position in range(run.n_tokens):
            parts = attention_parts(run, layer, position)
            torch.testing.assert_close(parts.pieces.double(), ref.attn_parts[position], atol=1e-5, rtol=1e-4)
            rebuilt = parts.residual + parts.pieces.sum((0, 1)) + parts.bias
            torch.testing.assert_close(rebuilt, parts.whole, atol=1e-4, rtol=1e-4)
            parts = ffn_parts(run, layer, position)
            torch.testing.assert_close(parts.residual + parts.pieces.sum(0) + parts.bias, parts.whole, atol=1e-4, rtol=1e-4)


def test_the_route_of_the_mask_reaches_tokens_on_both_sides(runs):
    run = runs["bert"]
    mask = run.str_tokens.index("[MASK]")
    graph = llm_flow.build_graph(run, target=mask, threshold=0.01)
    positions = {data["position"] for _, data in graph.nodes(data=True)}
    assert any(p > mask for p in positions) and any(p < mask for p in positions)
    assert f"I{run.n_layers - 1}_{mask}" in graph


def test_the_neuron_view_equals_queries_and_keys_of_the_plain_modules(runs, folders):
    """BertViz's neuron view numbers (q, k, q·k, softmax) from BERT's own query/key layers."""
    from llm_flow.views.attention_scores import neuron_view

    run = runs["bert"]
    model = AutoModelForMaskedLM.from_pretrained(str(folders["bert"]), attn_implementation="eager").eval()
    out = hf_output(folders["bert"], run)
    n_heads, d_head = 4, 16
    layer, head, query = 1, 2, 3
    attention = model.bert.encoder.layer[layer].attention.self
    with torch.no_grad():
        hidden = out.hidden_states[layer][0]
        q = attention.query(hidden).view(-1, n_heads, d_head)[query, head]
        k = attention.key(hidden).view(-1, n_heads, d_head)[:, head]
    dots = k @ q
    view = neuron_view(run, layer, head, query)
    assert list(view.positions) == list(range(run.n_tokens))  # every source, after the query too
    torch.testing.assert_close(torch.from_numpy(view.query_vector), q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(view.keys), k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(view.dots), dots, atol=1e-4, rtol=1e-5)
    expected = torch.softmax(dots / d_head**0.5, -1)
    torch.testing.assert_close(torch.from_numpy(view.probabilities), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(view.model_weights), out.attentions[layer][0, head, query])


def test_attention_views_show_every_source_and_both_pair_directions(runs):
    from llm_flow.views.attention import attention_view, token_window

    run = runs["bert"]
    window = token_window(run, center=3, size=4)
    for weighting in ("attention", "norm", "alti"):
        view = attention_view(run, layers=[0, 1], window=window, weighting=weighting)
        assert view.weights.shape == (2, 4, 4, 4)
        totals = view.weights.sum(-1) + view.outside  # inside plus outside the window: every source
        if weighting == "attention":
            assert abs(totals - 1.0).max() < 1e-5
        elif weighting == "alti":  # the heads' shares: all but the residual's
            residual = llm_flow.attention_contributions(run, 0)[1][window.start : window.stop].numpy()
            assert abs(totals[0].sum(0) - (1.0 - residual)).max() < 1e-5
    split = run.str_tokens.index(".") + 1
    a_reads_b = attention_view(run, layers=[0], split=split, part="A->B")
    assert a_reads_b.weights.sum() > 0.1


def test_routes_start_at_the_mask_and_decoder_only_capabilities_are_refused(runs):
    # attribution at the mask: tests/test_attribution_masked.py
    from llm_flow.faithfulness.problem import prepare
    from llm_flow.faithfulness.settings import AblationSpec
    from llm_flow.views.generation import generate
    from llm_flow.views.predictions import default_target, prediction_title

    run = runs["bert"]
    mask = run.str_tokens.index("[MASK]")
    assert default_target(run) == mask
    assert prediction_title(run, "[MASK]") == "Predicted at '[MASK]'"
    with pytest.raises(llm_flow.UnsupportedModelError, match="does not generate text"):
        generate(run.model, PROMPT, 2)
    # route checks work on encoders (tests/test_encoder_checks.py); faithfulness reads causal edges
    with pytest.raises(llm_flow.UnsupportedModelError, match="faithfulness checks score and ablate a decoder"):
        prepare(run, "the", "a", AblationSpec("zero"))


def test_a_sentence_pair_is_read_with_its_token_types(folders):
    """"A [SEP] B" is BERT's pair encoding: same ids as tokenizer(A, B), and B's token types set."""
    from llm_flow.models.encoders import pair_split

    model = llm_flow.load_model(str(folders["bert"]))
    first, second = "The capital of France is [MASK].", "Paris is a city."
    run = model.run(f"{first} [SEP] {second}")
    pair = model.tokenizer(first, second)
    assert run.tokens.tolist() == pair["input_ids"]
    hf = AutoModelForMaskedLM.from_pretrained(str(folders["bert"]), attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf(run.tokens[None], token_type_ids=torch.tensor([pair["token_type_ids"]])).logits[0]
        single = hf(run.tokens[None]).logits[0]
    torch.testing.assert_close(run.logits, expected, atol=1e-4, rtol=1e-4)
    assert float((run.logits - single).abs().max()) > 1e-2  # the token types matter
    split = pair_split(run.tokens.tolist(), model.tokenizer.sep_token_id)
    assert run.str_tokens[split - 1] == "[SEP]" and pair["token_type_ids"].index(1) == split

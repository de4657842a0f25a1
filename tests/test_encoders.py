"""Encoders (BERT, RoBERTa, MiniLM-style sentence encoders): bidirectional attention everywhere,
post-LN blocks linearised per token, the [MASK] prediction explained (issue 20, item 1).
Checked against plain transformers modules in float64 (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

import llm_flow
from tests.reference import assert_layer_matches, reference_layers, reference_neurons
from tests.tiny_models import ENCODERS, save_tiny_model

PROMPT = "The capital of France is [MASK]. Mary gave a drink to John."
ATOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {family: save_tiny_model(family, root / family) for family in ENCODERS}


@pytest.fixture(scope="module")
def runs(folders):
    return {family: llm_flow.load_model(str(folders[family])).run(PROMPT) for family in ENCODERS}


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

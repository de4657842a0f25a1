"""all-MiniLM-L6-v2, a real pretrained encoder (BERT architecture, no masked-LM head), from its
PyPI package: every number against plain transformers modules."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

import llm_flow
from llm_flow.config import load_config
from llm_flow.models.archives import unpacked_folder
from llm_flow.models.packaged import packaged_file
from tests.conftest import REPO
from tests.reference import assert_layer_matches, reference_layers

pytestmark = pytest.mark.real_model
PROMPT = "The capital of France is [MASK]. Paris is a city in France."


@pytest.fixture(scope="module")
def folder():
    entry = load_config(REPO / "config" / "local.json").models["all-minilm-l6-v2"]
    return unpacked_folder(packaged_file(entry.source))


@pytest.fixture(scope="module")
def run(minilm):
    return minilm.run(PROMPT)


@pytest.fixture(scope="module")
def plain(folder, run):
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        return model, model(run.tokens[None], output_attentions=True, output_hidden_states=True)


def test_loads_as_a_headless_bidirectional_encoder(minilm, run):
    info = minilm.info
    assert (info.n_layers, info.n_heads, info.d_model) == (6, 12, 384)
    assert info.bidirectional and info.post_ln and info.no_lm_head
    assert run.str_tokens[:7] == ["[CLS]", "the", "capital", "of", "france", "is", "[MASK]"]


def test_states_patterns_and_logits_are_the_models_own(run, plain):
    model, out = plain
    for layer in range(run.n_layers):
        torch.testing.assert_close(run.layer(layer).resid_pre, out.hidden_states[layer][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(run.layer(layer).pattern.dense(), out.attentions[layer][0], atol=1e-5, rtol=1e-4)
    embeddings = model.get_input_embeddings().weight
    torch.testing.assert_close(run.logits, out.last_hidden_state[0] @ embeddings.T, atol=1e-3, rtol=1e-4)


def test_contributions_match_reference_on_real_weights(run, folder):
    reference = reference_layers(str(folder), run.tokens.tolist())
    for layer in (0, 3, 5):
        assert_layer_matches(run, layer, reference[layer], 1e-4)


def test_the_route_of_the_mask_reads_both_sides(run):
    from llm_flow.views.predictions import default_target

    mask = default_target(run)
    assert run.str_tokens[mask] == "[MASK]"
    # The residual carries 80-96 % of the [MASK] state in every layer of this model, so its
    # attention edges are small: at t = 0.01 they reach the tokens on both sides.
    graph = llm_flow.build_graph(run, target=mask, threshold=0.01)
    into_mask = [
        graph.nodes[source]["position"] for source, dest in graph.edges if dest.startswith("A") and dest.endswith(f"_{mask}")
    ]
    assert any(p < mask for p in into_mask) and any(p > mask for p in into_mask), into_mask

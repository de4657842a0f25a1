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


def test_removals_on_real_weights_equal_transformers_with_hooks(run, folder):
    """Parts into the [MASK] token from both sides, in layers 1 and 4, and an FFN, removed: the
    logits equal the same removals done on the LayerNorm outputs of plain transformers modules
    (float64, tests/hf_interventions.py), and the removal moves them well beyond the tolerance."""
    from llm_flow.interventions import AttentionPart, FfnPart, ablated_logits, ablation
    from tests.hf_interventions import HfModel

    mask = run.str_tokens.index("[MASK]")
    triples = [(mask, j, h) for j in (1, mask - 1, mask, mask + 1, run.n_tokens - 1) for h in range(0, 12, 2)]
    parts = [AttentionPart(layer, *t) for layer in (1, 4) for t in triples] + [FfnPart(2, mask)]
    logits = ablated_logits(run, ablation(run, parts))

    def subtract(out, ctx):
        out = out.clone()
        for i, j, h in triples:
            out[i] -= ctx.part(i, j, h)
        return out

    def no_ffn(out, ctx):
        out = out.clone()
        out[mask] -= ctx.through_norm(ctx.saved["mlp_out"][mask], mask, "ffn_gain")
        return out

    reference = HfModel(str(folder), headless=True)
    expected = reference.logits(run.tokens.tolist(), attention={1: subtract, 4: subtract}, ffn={2: no_ffn})
    diff = (logits.double() - expected).abs().max().item()
    assert diff < 1e-3, f"max logit difference {diff:.2e}"  # logits up to ~100: float32 against float64
    assert (logits - run.logits).abs().max().item() > 100 * 1e-3


def test_the_mask_route_is_checked_against_random_routes(minilm):
    """"The capital of France is [MASK]." on MiniLM, as the Explorer checks it (threshold 0.04):
    the check runs on the [MASK]'s own prediction and the route's removal changes it. (This
    sentence encoder predicts through its input embeddings, a nearly flat distribution: measured
    p('bert') = 0.0007, route removed 0.0004, below all 20 random removals; route only 0.0001.)"""
    from llm_flow.interventions import check_route

    run = minilm.run("The capital of France is [MASK].")
    mask = run.str_tokens.index("[MASK]")
    check = check_route(run, llm_flow.build_graph(run, target=mask, threshold=0.04), draws=5, seed=0)
    assert check.position == mask and check.token_id == int(run.logits[mask].argmax())
    assert check.unmodified.rank == 1 and check.n_route_parts > 0
    assert abs(check.route_removed.logit - check.unmodified.logit) > 0.05
    assert 0 <= check.only_percentile <= 100 and 0 <= check.removed_percentile <= 100

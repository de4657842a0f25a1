"""The numbers the panels show, each checked against plain transformers modules and hooks."""

from __future__ import annotations

import pytest
import torch

from llm_flow.views.heads import attention_map, contribution_map, edge_heads
from llm_flow.views.logit_lens import logit_lens
from llm_flow.views.neurons import top_neurons
from llm_flow.views.predictions import top_predictions
from llm_flow.views.promoted import block_update, head_output, neuron_output, promoted_tokens
from llm_flow.views.tokens import display_token
from tests.conftest import PROMPT
from tests.reference import (
    reference_contributions,
    reference_layers,
    reference_model,
    reference_neurons,
    reference_projection,
    reference_unembed,
)
from tests.tiny_models import FAMILIES


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tiny_models, tiny_folders):
    family = request.param
    run = tiny_models(family).run(PROMPT)
    folder = str(tiny_folders[family])
    return run, reference_model(folder), reference_layers(folder, run.tokens.tolist())


def ids(scored):
    return [t.token_id for t in scored]


def plain_logits(model, run) -> torch.Tensor:
    """The logits of the run's tokens from the transformers model alone (float64): [T, vocab]."""
    with torch.no_grad():
        return model(run.tokens[None]).logits[0]


def test_lens_of_the_last_state_is_the_models_prediction(case):
    run, model, _ = case
    position = run.n_tokens - 1
    logits = plain_logits(model, run)[position]
    lens = logit_lens(run, "I", run.n_layers - 1, position, k=5)
    assert ids(lens) == torch.topk(logits, 5).indices.tolist()
    expected = torch.softmax(logits, -1)[ids(lens)]
    assert [t.probability for t in lens] == pytest.approx(expected.tolist(), rel=1e-4)


@pytest.mark.parametrize("normalize", [True, False])
def test_lens_and_rank_change_of_a_middle_state(case, normalize):
    run, model, ref = case
    layer, position = 1, 4
    kind = "I" if run.parallel else "A"
    state = ref[layer].resid_post[position] if run.parallel else ref[layer].resid_mid[position]
    before = ref[layer].resid_pre[position]
    logits, logits_before = reference_unembed(model, state, normalize), reference_unembed(model, before, normalize)
    lens = logit_lens(run, kind, layer, position, k=8, normalize=normalize)
    assert ids(lens) == torch.topk(logits, 8).indices.tolist()
    rank = lambda scores, t: int((scores > scores[t]).sum())  # noqa: E731
    assert [t.rank_change for t in lens] == [rank(logits_before, t) - rank(logits, t) for t in ids(lens)]


def test_promoted_and_suppressed_tokens_of_the_ffn(case):
    run, model, ref = case
    layer, position = 2, 3
    if run.parallel:  # the update of a parallel layer is attention + FFN together
        update = ref[layer].resid_post[position] - ref[layer].resid_pre[position]
    else:
        update = ref[layer].mlp_out[position]
    torch.testing.assert_close(block_update(run, "I", layer, position).double(), update, atol=1e-4, rtol=1e-4)
    scores = reference_projection(model, update)
    promotion = promoted_tokens(run.model, block_update(run, "I", layer, position), k=6)
    assert ids(promotion.promoted) == torch.topk(scores, 6).indices.tolist()
    assert ids(promotion.suppressed) == torch.topk(scores, 6, largest=False).indices.tolist()


def test_head_and_neuron_outputs(case):
    run, _, ref = case
    layer, position = 1, 6
    for head in range(run.model.info.n_heads):
        expected = ref[layer].attn_parts[position, :, head].sum(0)
        torch.testing.assert_close(head_output(run, layer, position, head).double(), expected, atol=1e-4, rtol=1e-4)
    for neuron in (0, 5, 17):
        expected = ref[layer].neuron_parts[position, neuron]
        torch.testing.assert_close(neuron_output(run, layer, position, neuron).double(), expected, atol=1e-5, rtol=1e-4)


def test_head_maps_and_edge_ranking(case):
    run, _, ref = case
    layer = 2
    ref_heads, *_ = reference_contributions(ref[layer], run.parallel)
    for head in range(run.model.info.n_heads):
        # the Run's forward pass attends with SDPA, the reference eagerly: float32 rounding of
        # the residual stream differs by ~1e-6 and peaked rows of this random model amplify it
        torch.testing.assert_close(attention_map(run, layer, head).double(), ref[layer].pattern[head], atol=3e-5, rtol=0)
        torch.testing.assert_close(contribution_map(run, layer, head).double(), ref_heads[:, :, head], atol=1e-4, rtol=0)
    position, source = run.n_tokens - 1, 2
    ranked = edge_heads(run, layer, source, position)
    assert [h.head for h in ranked] == torch.argsort(ref_heads[position, source], descending=True).tolist()
    assert [h.contribution for h in ranked] == pytest.approx(sorted(ref_heads[position, source].tolist(), reverse=True), abs=1e-4)


def test_top_neurons(case):
    run, _, ref = case
    layer, position = 0, 5
    ref_contrib, _ = reference_neurons(ref[layer], position, run.parallel)
    neurons = top_neurons(run, layer, position, k=10)
    assert [n.neuron for n in neurons] == torch.topk(ref_contrib, 10).indices.tolist()
    assert [n.activation for n in neurons] == pytest.approx(ref[layer].neuron_acts[position, [n.neuron for n in neurons]].tolist(), rel=1e-4, abs=1e-5)


def test_predictions_with_temperature(case):
    run, model, _ = case
    logits = plain_logits(model, run)[3]
    for temperature in (1.0, 0.5, 2.0):
        predictions = top_predictions(run, 3, k=4, temperature=temperature)
        probs = torch.softmax(logits / temperature, -1)
        assert [p.token_id for p in predictions] == torch.topk(probs, 4).indices.tolist()
        assert [p.probability for p in predictions] == pytest.approx(torch.topk(probs, 4).values.tolist(), rel=1e-4)


def test_display_token():
    assert display_token(" capital") == "·capital"
    assert display_token("end ") == "end·"
    assert display_token("\n") == "↵"
    assert display_token("   ") == "···"
    assert display_token("") == "∅"
    assert display_token("a\tb") == "a⇥b"

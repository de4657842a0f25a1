"""Mixtures of experts (Mixtral, Qwen2-MoE): the FFN node as the router-weighted sum of its
experts, split by expert, neurons ranked within an expert (issue 20, item 3). Checked against
the plain modules in float64 with the router re-implemented (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch

import llm_flow
from llm_flow.views.neurons import SHARED, expert_shares, top_neurons
from tests.reference import l1_proximity, reference_moe
from tests.tiny_models import save_tiny_models

PROMPT = "The capital of France is Paris. When Mary and John went to the store"
FAMILIES = ["mixtral", "qwen2_moe"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_tiny_models(FAMILIES, tmp_path_factory.mktemp("experts"))


@pytest.fixture(scope="module")
def runs(folders):
    return {family: llm_flow.load_model(str(folder)).run(PROMPT) for family, folder in folders.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_is_read_as_a_mixture_of_experts(runs, family):
    info = runs[family].model.info
    assert (info.n_experts, info.experts_per_token) == (4, 2)
    active = {"mixtral": 2 * 96, "qwen2_moe": 2 * 48 + 64}  # two experts' neurons (+ the shared expert's)
    assert info.d_mlp == active[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_experts_and_neurons_match_the_reference(runs, folders, family):
    run = runs[family]
    for layer in (0, run.n_layers - 1):
        for position in (1, run.n_tokens - 1):
            ref = reference_moe(str(folders[family]), run.tokens.tolist(), layer, position)
            # the reference itself (transformers takes the router softmax in float32)
            torch.testing.assert_close(ref.outputs.sum(0), ref.mlp_out, atol=1e-5, rtol=1e-5)
            routing = run.layer(layer).experts
            assert routing.indices[position].tolist() == [e for e in ref.experts if e != SHARED]
            # neurons: the literal formula on the reference's own parts
            prox = l1_proximity(ref.whole, ref.neurons)
            prox_rest = l1_proximity(ref.whole, ref.residual)
            total = prox.sum() + prox_rest
            c_neurons, c_rest = llm_flow.neuron_contributions(run, layer, position)
            torch.testing.assert_close(c_neurons.double(), prox / total, atol=ATOL, rtol=0)
            assert abs(c_rest - float(prox_rest / total)) < ATOL
            # split by expert
            prox = l1_proximity(ref.whole, ref.outputs)
            total = prox.sum() + prox_rest
            shares, residual = expert_shares(run, layer, position)
            by_expert = {share.expert: share for share in shares}
            for expert, weight, p in zip(ref.experts, ref.weights, prox.tolist()):
                assert abs(by_expert[expert].contribution - p / float(total)) < ATOL
                assert abs(by_expert[expert].router_weight - weight) < 1e-5
            assert abs(residual - float(prox_rest / total)) < ATOL
            assert abs(sum(s.contribution for s in shares) + residual - 1) < 1e-5


def test_neurons_are_ranked_within_the_chosen_expert(runs):
    run = runs["qwen2_moe"]
    layer, position = 1, 4
    routing = run.layer(layer).experts
    everything = top_neurons(run, layer, position, k=1000)
    for expert in [*routing.indices[position].tolist(), SHARED]:
        mine = top_neurons(run, layer, position, k=5, expert=expert)
        assert [n.expert for n in mine] == [expert] * 5
        assert mine == [n for n in everything if n.expert == expert][:5]
    unused = next(e for e in range(4) if e not in routing.indices[position].tolist())
    with pytest.raises(llm_flow.ArgumentError, match=f"did not use expert {unused}"):
        top_neurons(run, layer, position, expert=unused)


def test_routes_through_experts_are_built(runs):
    for run in runs.values():
        graph = llm_flow.build_graph(run, threshold=0.02)
        assert any(data["kind"] == "ffn" for _, data in graph.nodes(data=True))

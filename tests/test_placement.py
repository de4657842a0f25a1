"""Models placed by accelerate (a config entry's ``device_map`` / ``max_memory``): a placement
that keeps every weight in memory loads and gives the same numbers; one that offloads weights
is refused with the reason, because llm-flow reads weights outside the forward pass that would
bring them in (otherwise: meta placeholders, wrong numbers or a raw error)."""

from __future__ import annotations

import json

import pytest
import torch

import llm_flow
from llm_flow.config import load_config


def _config(tmp_path, tiny_folders, **placement) -> llm_flow.Config:
    entry = {"source": str(tiny_folders["llama"]), **placement}
    path = tmp_path / "local.json"
    path.write_text(json.dumps({"default_model": "placed", "models": {"placed": entry}}))
    return load_config(path)


def test_a_placement_in_memory_gives_the_same_route_numbers(tmp_path, tiny_folders, tiny_models):
    placed = llm_flow.load_model("placed", config=_config(tmp_path, tiny_folders, device_map={"": "cpu"}))
    plain = tiny_models("llama")
    prompt = "The capital of France is"
    a, b = placed.run(prompt), plain.run(prompt)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    first, second = (llm_flow.build_graph(run, target=-1, threshold=0.02) for run in (a, b))
    assert sorted(first.edges) == sorted(second.edges)


def test_weights_offloaded_to_disk_are_refused_with_the_reason(tmp_path, tiny_folders):
    config = _config(tmp_path, tiny_folders, device_map="auto", max_memory={"cpu": "60KB"})
    for _ in range(2):
        with pytest.raises(llm_flow.UnsupportedModelError) as refused:
            llm_flow.load_model("placed", config=config)
        message = str(refused.value)
        assert "offloads weights to disk" in message and "raise max_memory" in message


def test_a_bad_device_map_names_the_key(tmp_path, tiny_folders):
    with pytest.raises(llm_flow.ConfigError, match="device_map"):
        _config(tmp_path, tiny_folders, device_map="everywhere")

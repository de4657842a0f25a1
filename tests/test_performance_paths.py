"""The code paths that exist for speed and memory give the same answers as the plain ones."""

from __future__ import annotations

import pytest
import torch

import llm_flow
from llm_flow.models.run import CausalPattern
from llm_flow.routes import contributions, proximity
from llm_flow.routes.contributions import contribution_rows

PROMPT = "The capital of France is Paris. When Mary and John went to the store, John gave a drink"
FAMILIES = ["gpt2", "llama", "gpt_neox", "qwen2", "gemma2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_small_row_blocks_give_the_same_contributions(tiny_models, monkeypatch, family):
    """Splitting a layer into many row blocks (as long prompts do) changes nothing."""
    model = tiny_models(family)
    whole_layer = [llm_flow.attention_contributions(model.run(PROMPT), layer) for layer in range(2)]
    monkeypatch.setattr(contributions, "_ROW_BLOCK_ELEMENTS", 50)
    run = model.run(PROMPT)
    assert contributions._rows_per_block(run, run.n_tokens) < run.n_tokens // 4
    for layer, (heads, residual) in enumerate(whole_layer):
        blocked_heads, blocked_residual = llm_flow.attention_contributions(run, layer)
        torch.testing.assert_close(blocked_heads, heads, atol=1e-6, rtol=0)
        torch.testing.assert_close(blocked_residual, residual, atol=1e-6, rtol=0)


def test_row_blocks_are_whole_rows_when_the_budget_is_not_a_multiple(tiny_models, monkeypatch):
    """A budget of 2.5 rows gives blocks of 2 rows (a long prompt's budget is rarely a multiple
    of one row's size), and those blocks give the all-rows contributions."""
    model = tiny_models("gpt2")
    heads, residual = llm_flow.attention_contributions(model.run(PROMPT), 1)
    run = model.run(PROMPT)
    row_elements = run.n_tokens * run.layer(0).pattern.n_heads
    monkeypatch.setattr(contributions, "_ROW_BLOCK_ELEMENTS", row_elements * 5 // 2)
    block = contributions._rows_per_block(run, run.n_tokens)
    assert block == 2 and isinstance(block, int)
    blocked_heads, blocked_residual = llm_flow.attention_contributions(run, 1)
    torch.testing.assert_close(blocked_heads, heads, atol=1e-6, rtol=0)
    torch.testing.assert_close(blocked_residual, residual, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("block_elements", [50, 1 << 24])
@pytest.mark.parametrize("few_coordinates", [0.0, 1.0])
def test_scattered_rows_equal_the_full_layer(tiny_models, monkeypatch, family, block_elements, few_coordinates):
    """Rows asked for in any order, with gaps (what the pruner does), equal the all-rows result,
    whether their head vectors are made in every coordinate (0.0) or only in those their parts
    can reach (1.0: what a route's few rows get on a long prompt)."""
    monkeypatch.setattr(contributions, "_ROW_BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(proximity, "_FEW_COORDINATES", few_coordinates)
    model = tiny_models(family)
    run = model.run(PROMPT)
    positions = [run.n_tokens - 1, 2, 7, 0, run.n_tokens // 2]
    rows = contribution_rows(run, 1, positions)
    heads, residual = llm_flow.attention_contributions(model.run(PROMPT), 1)
    for row in rows:
        torch.testing.assert_close(row.heads, heads[row.position, : row.position + 1], atol=1e-6, rtol=0)
        assert row.residual == pytest.approx(float(residual[row.position]), abs=1e-6)


def test_run_leaves_no_full_attention_pattern_behind(tiny_models):
    """The forward pass keeps only the packed triangle: no [1, H, T, T] copy stays on a module."""
    model = tiny_models("gpt2")
    run = model.run(PROMPT)
    full_size = run.layers[0].pattern.n_heads * run.n_tokens**2
    for module in model._bridge.modules():
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                assert value.numel() < full_size, f"{type(module).__name__}.{name} keeps a full pattern"


def test_packed_offsets_address_each_row():
    pattern = torch.rand(3, 11, 11).tril()
    packed = CausalPattern(pattern)
    positions = torch.tensor([10, 0, 4])
    offsets = packed.row_offsets(positions)
    for position, offset in zip(positions.tolist(), offsets.tolist()):
        row = packed.packed[:, offset : offset + position + 1]
        torch.testing.assert_close(row, pattern[:, position, : position + 1])
    assert packed.packed.shape == (3, 11 * 12 // 2)

"""Anatomy of a prediction against plain transformers: hidden states, its own final norm and
output layer, and ALTI contributions by the direct formula (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch

from llm_flow.errors import ArgumentError
from llm_flow.figures.playground import anatomy_figure
from llm_flow.views.anatomy import anatomy
from tests.conftest import PROMPT
from tests.reference import reference_contributions, reference_layers, reference_model, reference_unembed
from tests.tiny_models import FAMILIES

POSITION = 6


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tiny_models, tiny_folders):
    family = request.param
    run = tiny_models(family).run(PROMPT)
    folder = str(tiny_folders[family])
    return run, reference_model(folder), reference_layers(folder, run.tokens.tolist())


def test_residual_norms_equal_the_hidden_states_of_transformers(case):
    run, model, ref = case
    with torch.no_grad():
        hidden = model(run.tokens[None], output_hidden_states=True).hidden_states  # L + 1 x [1, T, d]
    # transformers' last hidden state is after the final norm: the last layer's output comes from a hook.
    expected = [h[0, POSITION].norm().item() for h in hidden[:-1]] + [ref[-1].resid_post[POSITION].norm().item()]
    result = anatomy(run, POSITION)
    assert [row.norm for row in result.rows] == pytest.approx(expected, rel=1e-4)
    assert [row.node for row in result.rows] == [f"X_{POSITION}", *(f"I{l}_{POSITION}" for l in range(run.n_layers))]


def test_lens_top_token_and_target_rank_from_the_models_own_head(case):
    run, model, ref = case
    target = int(run.tokens[POSITION + 1])  # explain the token that actually came next
    result = anatomy(run, POSITION, target_id=target)
    states = [ref[0].resid_pre[POSITION], *(layer.resid_post[POSITION] for layer in ref)]
    for row, state in zip(result.rows, states):
        logits = reference_unembed(model, state)
        assert row.lens_token_id == int(logits.argmax())
        assert row.target_rank == int((logits > logits[target]).sum()) + 1  # ranks count from 1
        assert row.target_probability == pytest.approx(float(torch.softmax(logits, -1)[target]), abs=1e-5)
    assert result.target_id == target and result.target == run.str_tokens[POSITION + 1]
    # By default the explained token is the model's prediction, rank 1 after the last layer.
    default = anatomy(run, POSITION)
    assert default.target_id == int(run.logits[POSITION].argmax()) and default.rows[-1].target_rank == 1


def test_shares_compose_the_contributions(case):
    run, _, ref = case
    result = anatomy(run, POSITION)
    assert result.rows[0].attention is None and result.rows[0].heads == ()
    for layer, row in zip(range(run.n_layers), result.layers):
        c_heads, c_res, c_ffn, c_res2 = reference_contributions(ref[layer], run.parallel)
        carried = 1.0 if run.parallel else float(c_res2[POSITION])  # share of the residual after attention
        heads = (carried * c_heads[POSITION].sum(0)).tolist()
        assert row.heads == pytest.approx(heads, abs=1e-5)
        assert row.attention == pytest.approx(sum(heads), abs=1e-5)
        assert row.ffn == pytest.approx(float(c_ffn[POSITION]), abs=1e-5)
        assert row.residual == pytest.approx(carried * float(c_res[POSITION]), abs=1e-5)
        assert row.attention + row.ffn + row.residual == pytest.approx(1.0, abs=1e-5)


def test_anatomy_figure_links_layers_to_route_nodes(tiny_models):
    run = tiny_models("llama").run(PROMPT)
    figure = anatomy_figure(anatomy(run, POSITION))
    ids = {c for trace in figure.data for c in (trace.customdata or ()) if isinstance(c, str)}
    layers = range(run.n_layers)
    assert {f"A{l}_{POSITION}" for l in layers} | {f"M{l}_{POSITION}" for l in layers} <= ids
    assert {f"I{l}_{POSITION}" for l in layers} | {f"X_{POSITION}"} <= ids


def test_bad_target_token_is_refused(tiny_models):
    run = tiny_models("gpt2").run(PROMPT)
    with pytest.raises(ArgumentError, match="vocabulary"):
        anatomy(run, 0, target_id=10**6)
    with pytest.raises(ArgumentError, match="out of range"):
        anatomy(run, 99)

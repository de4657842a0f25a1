"""The Inside page's numbers, stage by stage, against a plain `transformers` forward pass with hooks
(float64, eager attention: tests/reference.py), on the tiny model of every tested family: the
embedding, each norm, q/k/v, rotary, every attention step (the softmax row equals
``output_attentions``), the heads' output, the MLP (gate ⊙ up), Gemma's post-norms and
soft-caps, the block output (equal to the next block's input), the final norm, the logits and the
Playground's sampling distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from llm_flow.errors import UnsupportedModelError
from llm_flow.validation import INSIDE_STAGES
from llm_flow.views.inside import WalkthroughOf, overview, shared_walkthrough, walkthrough
from llm_flow.views.sampling import SamplingSettings, sampling_stages
from tests.conftest import PROMPT
from tests.reference import reference_stages
from tests.tiny_models import FAMILIES

WINDOW = 8
LAYER, HEAD = 1, 2  # under GQA head 2 reads kv head 1 (head % n_kv would say 0)


def close(got, expected, what: str) -> None:
    """Float32 (the app) against float64 (the reference), relative to the numbers' size."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    assert (np.isfinite(got) == finite).all(), f"{what}: masked cells differ"
    scale = max(1.0, float(np.abs(expected[finite]).max()))
    error = float(np.abs(got[finite] - expected[finite]).max())
    assert error <= 2e-4 * scale, f"{what}: off by {error:.3g} (numbers up to {scale:.3g})"


def matrix(walk, stage: str, name: str):
    """The expanded stage's matrix whose name starts with `name`."""
    found = [m for m in walk.stage(stage).detail if m.name.startswith(name)]
    assert len(found) == 1, [m.name for m in walk.stage(stage).detail]
    return found[0].values


def strip(walk, stage: str, name: str):
    found = [m for m in walk.stage(stage).strip if m.name == name]
    assert len(found) == 1, [m.name for m in walk.stage(stage).strip]
    return found[0].values[0]


@pytest.fixture(scope="module")
def family_walks(tiny_models, tiny_folders):
    made = {}

    def get(family: str, layer: int = LAYER):
        if (family, layer) not in made:
            run = tiny_models(family).run(PROMPT)
            position = run.n_tokens - 5  # a window with tokens on both sides
            walk = walkthrough(run, layer, HEAD, position, window=WINDOW)
            model, ref = reference_stages(str(tiny_folders[family]), run.tokens.tolist(), layer)
            made[family, layer] = run, walk, model, ref
        return made[family, layer]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_input_stages_equal_transformers(family, family_walks, tiny_folders):
    run, walk, model, ref = family_walks(family)
    rows = slice(walk.window.start, walk.window.stop)
    ids = AutoTokenizer.from_pretrained(tiny_folders[family])(PROMPT)["input_ids"]
    assert strip(walk, "tokens", "token id").tolist() == ids[rows]
    raw = model.get_input_embeddings().weight[torch.tensor(ids)]
    close(matrix(walk, "embedding", "token embedding"), raw[rows], "W_E rows")
    if family == "gemma2":
        close(matrix(walk, "embedding", "scaled by"), ref["embed.out"][rows], "scaled embedding")
    if "pos.out" in ref:
        close(matrix(walk, "embedding", "position embedding"), ref["pos.out"][rows], "position embedding")
    close(matrix(walk, "embedding", "x₀"), ref["first_block.in"][rows], "block 0's input")


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_half_of_the_block_equals_transformers(family, family_walks):
    run, walk, model, ref = family_walks(family)
    rows = slice(walk.window.start, walk.window.stop)
    h, g = HEAD, walk.kv_head
    assert g == HEAD // (model.config.num_attention_heads // ref["k"].shape[1])
    x = ref["block.in"]
    close(matrix(walk, "norm_attn", "x: input"), x[rows], "block input")
    ln = model.get_submodule(_path(model, "ln1"))
    eps = getattr(ln, "eps", None) or getattr(ln, "variance_epsilon")
    if family in ("gpt2", "gpt_neox"):
        hat = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    else:
        hat = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    close(matrix(walk, "norm_attn", "x̂"), hat[rows], "x̂")
    close(matrix(walk, "norm_attn", "y: output"), ref["ln1.out"][rows], "ln1 output")
    close(matrix(walk, "qkv", "Q"), ref["q"][rows, h], "queries")
    close(matrix(walk, "qkv", "K"), ref["k"][rows, g], "keys")
    close(matrix(walk, "qkv", "V"), ref["v"][rows, g], "values")
    q, k = ref["q"], ref["k"]
    if "q_rot" in ref:
        q, k = ref["q_rot"], ref["k_rot"]
        close(matrix(walk, "rotary", f"Q head {h}, before"), ref["q"][rows, h], "q before rotary")
        close(matrix(walk, "rotary", f"Q head {h}, rotated"), q[rows, h], "rotated queries")
        close(matrix(walk, "rotary", f"K kv head {g}, rotated"), k[rows, g], "rotated keys")
    else:
        assert "rotary" not in walk.keys
    dots = q[rows, h] @ k[rows, g].T
    close(matrix(walk, "attention", "q·k"), dots, "q·k")
    scores = dots * ref["scaling"]
    close(matrix(walk, "attention", "×"), scores, "scaled scores")
    cap = getattr(model.config, "attn_logit_softcapping", None)
    if cap:
        scores = cap * torch.tanh(scores / cap)
        close(matrix(walk, "attention", "soft-cap"), scores, "soft-capped scores")
    causal = torch.ones_like(scores, dtype=torch.bool).tril()
    close(matrix(walk, "attention", "mask"), scores.masked_fill(~causal, float("-inf")), "masked scores")
    pattern = ref["pattern"][h][rows, rows]  # output_attentions
    close(matrix(walk, "attention", "softmax"), pattern, "softmax = output_attentions")
    close(strip(walk, "attention", "softmax"), pattern[walk.position - walk.window.start], "the query's row")
    close(matrix(walk, "attention", "z"), ref["z"][rows, h], "z = A V")
    close(strip(walk, "heads", "z (all heads)"), ref["o.in"][walk.position], "heads side by side")
    close(matrix(walk, "heads", "o: attention output"), ref["o.out"][rows], "output projection")
    if family == "gemma2":
        close(matrix(walk, "post_norm_attn", "y: output"), ref["post_attn.out"][rows], "post-attention norm")


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_half_of_the_block_equals_transformers(family, family_walks):
    run, walk, model, ref = family_walks(family)
    rows = slice(walk.window.start, walk.window.stop)
    if family == "gpt_neox":  # parallel: no residual between attention and MLP; ln2 reads the block input
        assert "residual_attn" not in walk.keys
        close(ref["ln2.in"], ref["block.in"], "(reference) NeoX's ln2 reads the block input")
    else:
        close(matrix(walk, "residual_attn", "x mid"), ref["ln2.in"][rows], "residual after attention")
    close(matrix(walk, "norm_mlp", "y: output"), ref["ln2.out"][rows], "ln2 output")
    act = model.get_submodule(_path(model, "act"))
    if "gate.out" in ref:
        close(matrix(walk, "mlp", "gate"), ref["gate.out"][rows], "gate")
        close(matrix(walk, "mlp", "up"), ref["up.out"][rows], "up")
        close(matrix(walk, "mlp", act_label(walk)), act(ref["gate.out"])[rows], "activation of the gate")
    else:
        close(matrix(walk, "mlp", "pre-activation"), ref["up.out"][rows], "pre-activation")
    close(matrix(walk, "mlp", "h: neuron"), ref["down.in"][rows], "neuron activations")
    close(matrix(walk, "mlp", "m: MLP output"), ref["down.out"][rows], "down-projection")
    mlp_out = ref["down.out"]
    if family == "gemma2":
        mlp_out = ref["post_mlp.out"]
        close(matrix(walk, "post_norm_mlp", "y: output"), mlp_out[rows], "post-MLP norm")
    close(matrix(walk, "block_out", "MLP output"), mlp_out[rows], "what the MLP adds")
    output = matrix(walk, "block_out", "block output")
    close(output, ref["block.out"][rows], "block output")
    close(output, ref["next_block.in"][rows], "block output = the next block's input")


def act_label(walk) -> str:
    return next(m.name for m in walk.stage("mlp").detail if m.name.endswith("(gate)"))


def _path(model, name: str) -> str:
    from tests.reference import _STAGE_MODULES

    return _STAGE_MODULES[model.config.model_type][name].format(l=LAYER)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_stages_equal_transformers_and_the_playground(family, family_walks, tiny_models):
    run, walk, model, ref = family_walks(family, layer=2)  # the last block: its output meets the final norm
    rows = slice(walk.window.start, walk.window.stop)
    close(matrix(walk, "block_out", "block output"), ref["final.in"][rows], "last block output = final norm input")
    close(matrix(walk, "final_norm", "y: output"), ref["final.out"][rows], "final norm")
    logits = ref["logits"]
    unembed = walk.stage("unembed").strip[-1]
    ids = [int(i) for i in torch.topk(logits[walk.position], len(unembed.columns)).indices]
    close(unembed.values[0], logits[walk.position, ids], "top logits (soft-capped as the model does)")
    close(matrix(walk, "unembed", "logits of the window"), logits[rows][:, ids], "the window's logits")
    settings = SamplingSettings(temperature=0.7, top_k=5, top_p=0.9)
    last = shared_walkthrough(run, 2, HEAD, -1, window=WINDOW, settings=settings, seed=3)
    playground = sampling_stages(run.position_logits(-1), settings)  # what the Playground draws from
    assert torch.equal(last.sampling.probs, playground.probs)
    reference = torch.softmax(logits[-1] / 0.7, -1)
    kept = playground.kept
    expected = torch.where(kept, reference, torch.zeros_like(reference))
    close(last.sampling.probs, expected / expected.sum(), "the distribution drawn from, against transformers' logits")
    assert playground.n_kept <= 5 and bool(kept[last.drawn])


def test_stages_come_in_the_models_order(family_walks):
    orders = {family: family_walks(family)[1].keys for family in FAMILIES}
    for keys in orders.values():
        assert list(keys) == [k for k in INSIDE_STAGES if k in keys]  # never out of the model's order
    assert "rotary" not in orders["gpt2"] and "rotary" in orders["llama"]
    assert "residual_attn" not in orders["gpt_neox"]  # parallel block
    assert {"post_norm_attn", "post_norm_mlp"} <= set(orders["gemma2"])
    assert not {"post_norm_attn", "post_norm_mlp"} & set(orders["qwen2"])


def test_long_prompts_show_a_window_around_the_token(tiny_models):
    run = tiny_models("llama").run(PROMPT * 2)
    walk = walkthrough(run, 0, 0, 20, window=6)
    assert (walk.window.start, walk.window.stop) == (17, 23)
    attention = walk.stage("attention")
    assert all(m.values.shape[0] == 6 for m in attention.detail)
    assert attention.detail[0].highlight == 3 and attention.detail[0].rows[3].startswith("20: ")


def test_kept_with_the_run_and_refused_when_not_reproduced(tiny_models):
    run = tiny_models("qwen2").run(PROMPT)
    first = shared_walkthrough(run, 1, 0)
    assert shared_walkthrough(run, 1, 0) is first
    assert any(isinstance(key, WalkthroughOf) for key in run.derived_store.keys())
    from dataclasses import replace

    wrong = replace(run.layers[1], resid_post=run.layers[1].resid_post + 1.0)  # a block output nobody computed
    broken = replace(run, layers=(run.layers[0], wrong, run.layers[2]), derived_store=type(run.derived_store)())
    with pytest.raises(UnsupportedModelError, match="cannot reproduce block 1"):
        walkthrough(broken, 1, 0)


def test_overview_shares_are_the_anatomys(tiny_models):
    from llm_flow.views.anatomy import anatomy

    run = tiny_models("gpt2").run(PROMPT)
    view = overview(run, 10, window=4)
    expected = anatomy(run, 10)
    assert [layer.attention for layer in view.layers] == [layer.attention for layer in expected.layers]
    assert view.sources[0][0] is None and [j for j, *_ in view.sources[1:]] == [8, 9, 10]
    assert sum(share for *_, share in view.sources) == pytest.approx(expected.layers[0].attention, abs=1e-6)

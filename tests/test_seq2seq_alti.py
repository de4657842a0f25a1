"""ALTI+ on encoder–decoders: the contributions of the first decoder layer's self- and
cross-attention blocks equal a float64 re-computation of that layer from the plain
`transformers` weights (which must reproduce the layer's output as `output_hidden_states` gives
it, so the parts are the model's own), and the rollout equals the formula of docs/method.md
composed here in float64. Tiny random Marian, BART (post-LN), T5 and mT5 (pre-RMSNorm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import llm_flow
from llm_flow.attribution import attribute
from llm_flow.errors import UnsupportedModelError
from llm_flow.routes.seq2seq import _check_sum, _ffn_block, _FfnSpec, seq2seq_contributions
from tests.reference import l1_proximity
from tests.test_seq2seq import FAMILIES, SOURCE, TARGET, folders, loaded  # noqa: F401  (fixtures)
from tests.tiny_models import build_model


def heads_parts(attention, query_input, value_input, pattern):
    """z[i, j, h] = A[h, i, j] (v[j, h] + b_V[h]) W_O[h], literally: [Q, K, H, d]."""
    if hasattr(attention, "v_proj"):
        w_v, b_v, w_o, n_heads = attention.v_proj.weight, attention.v_proj.bias, attention.out_proj.weight, attention.num_heads
    else:
        w_v, b_v, w_o, n_heads = attention.v.weight, None, attention.o.weight, attention.n_heads
    d_head = w_v.shape[0] // n_heads
    q, k, d = query_input.shape[0], value_input.shape[0], w_o.shape[0]
    out = torch.zeros(q, k, n_heads, d, dtype=torch.float64)
    for h in range(n_heads):
        rows = slice(h * d_head, (h + 1) * d_head)
        value = value_input @ w_v[rows].T + (0 if b_v is None else b_v[rows])  # [K, dh]
        moved = value @ w_o[:, rows].T  # [K, d]
        out[:, :, h] = pattern[h][:, :, None] * moved[None]
    return out


def shares(whole, residual, parts):
    prox_heads = l1_proximity(whole[:, None, None], parts)  # [Q, K, H]
    prox_residual = l1_proximity(whole, residual)
    total = prox_heads.sum((1, 2)) + prox_residual
    return prox_heads / total[:, None, None], prox_residual / total


def first_decoder_layer(model, out, decoder_ids):
    """((self heads, self residual), (cross heads, cross residual)) of decoder layer 0, from the
    weights, with the layer's output checked against `output_hidden_states`."""
    x = out.decoder_hidden_states[0][0]
    encoded = out.encoder_last_hidden_state[0]
    self_pattern, cross_pattern = out.decoder_attentions[0][0], out.cross_attentions[0][0]
    if model.config.model_type in ("t5", "mt5"):
        block = model.get_decoder().block[0]

        def rms(norm, h):
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight

        sa, ca, ff = block.layer
        z_self = heads_parts(sa.SelfAttention, rms(sa.layer_norm, x), rms(sa.layer_norm, x), self_pattern)
        h1 = x + z_self.sum((1, 2))
        z_cross = heads_parts(ca.EncDecAttention, rms(ca.layer_norm, h1), encoded, cross_pattern)
        h2 = h1 + z_cross.sum((1, 2))
        h3 = h2 + ff.DenseReluDense(rms(ff.layer_norm, h2))  # T5's ReLU, mT5's gated GELU
        torch.testing.assert_close(h3, out.decoder_hidden_states[1][0], atol=1e-6, rtol=1e-6)
        return shares(h1, x, z_self), shares(h2, h1, z_cross)
    layer = model.get_decoder().layers[0]

    def post_ln(norm, residual, parts, bias):
        """LN(residual + Σ parts + bias) and the linearised residual and parts (docs/method.md#encoders)."""
        u = residual + parts.sum((1, 2)) + bias
        whole = F.layer_norm(u, u.shape[-1:], norm.weight, norm.bias, norm.eps)
        gain = norm.weight / torch.sqrt(u.var(-1, unbiased=False, keepdim=True) + norm.eps)
        centred = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731
        return whole, gain * centred(residual), gain[:, None, None] * centred(parts)

    z_self = heads_parts(layer.self_attn, x, x, self_pattern)
    h1, r1, p1 = post_ln(layer.self_attn_layer_norm, x, z_self, layer.self_attn.out_proj.bias)
    z_cross = heads_parts(layer.encoder_attn, h1, encoded, cross_pattern)
    h2, r2, p2 = post_ln(layer.encoder_attn_layer_norm, h1, z_cross, layer.encoder_attn.out_proj.bias)
    h3 = F.layer_norm(h2 + layer.fc2(layer.activation_fn(layer.fc1(h2))), h2.shape[-1:], layer.final_layer_norm.weight,
                      layer.final_layer_norm.bias, layer.final_layer_norm.eps)  # fmt: skip
    torch.testing.assert_close(h3, out.decoder_hidden_states[1][0], atol=1e-6, rtol=1e-6)
    return shares(h1, r1, p1), shares(h2, r2, p2)


@pytest.mark.parametrize("family", [*FAMILIES, "mt5"])
def test_decoder_blocks_equal_a_float64_recomputation_from_the_weights(family, folders, loaded):
    seq2seq = loaded[family]
    run = seq2seq.run_pair(SOURCE, TARGET)
    mine = seq2seq_contributions(seq2seq, run.source_tokens.tolist(), run.target_ids)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folders[family], attn_implementation="eager").eval().double()
    with torch.no_grad():
        out = model(input_ids=run.source_tokens[None], decoder_input_ids=run.decoder_tokens[None],
                    output_attentions=True, output_hidden_states=True)  # fmt: skip
        (self_heads, self_residual), (cross_heads, cross_residual) = first_decoder_layer(model, out, run.decoder_tokens)
    np.testing.assert_allclose(mine.decoder_self[0].heads, self_heads.numpy(), atol=1e-6)
    np.testing.assert_allclose(mine.decoder_self[0].residual, self_residual.numpy(), atol=1e-6)
    np.testing.assert_allclose(mine.cross[0].heads, cross_heads.numpy(), atol=1e-6)
    np.testing.assert_allclose(mine.cross[0].residual, cross_residual.numpy(), atol=1e-6)
    assert mine.cross[0].heads.shape == (run.n_decoder, run.n_source, 4)
    assert np.triu(mine.decoder_self[0].tokens(), 1).max() == 0  # the decoder reads no later token


def rollout_by_the_formula(contributions) -> np.ndarray:
    """docs/method.md's ALTI+ rollout, written out with explicit block matrices."""
    n_source = contributions.encoder[0].residual.shape[0]
    n_target = contributions.cross[0].residual.shape[0]
    r_enc = np.eye(n_source)
    for block in contributions.encoder:
        c = block.heads.sum(-1) + np.diag(block.residual)
        r_enc = c @ r_enc
    r = np.hstack([np.zeros((n_target, n_source)), np.eye(n_target)])
    for own, cross in zip(contributions.decoder_self, contributions.cross):
        c_self = own.heads.sum(-1) + np.diag(own.residual)
        scaled = np.diag(cross.residual) @ c_self
        r = np.hstack([cross.heads.sum(-1) @ r_enc + scaled @ r[:, :n_source], scaled @ r[:, n_source:]])
    return r


@pytest.mark.parametrize("family", FAMILIES)
def test_alti_plus_rollout_is_the_formula_and_attributes_each_target_token(family, loaded):
    seq2seq = loaded[family]
    run = seq2seq.run_pair(SOURCE, TARGET)
    contributions = seq2seq_contributions(seq2seq, run.source_tokens.tolist(), run.target_ids)
    expected = rollout_by_the_formula(contributions)
    np.testing.assert_allclose(contributions.rollout(), expected, atol=1e-12)
    np.testing.assert_allclose(expected.sum(1), 1.0, atol=1e-9)
    result = attribute(seq2seq, SOURCE, "alti_rollout", continuation=TARGET)
    n_source = run.n_source
    for step in range(result.n_steps):
        visible = n_source + 1 + step
        np.testing.assert_allclose(result.scores[step, :visible], expected[step, :visible], atol=1e-12)
        assert np.isnan(result.scores[step, visible:]).all()
    np.testing.assert_allclose(np.nansum(result.scores, 1), 1.0, atol=1e-9)
    assert result.scale == "share"


def test_the_rollout_of_one_layer_stacks_is_the_formula(tmp_path):
    """The smallest encoder–decoder, one layer per stack: nothing may read a second layer."""
    model, tokenizer = build_model("marian")
    model.config.encoder_layers = model.config.decoder_layers = 1
    torch.manual_seed(0)
    transformers.MarianMTModel(model.config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    seq2seq = llm_flow.load_model(str(tmp_path))
    run = seq2seq.run_pair(SOURCE, TARGET)
    contributions = seq2seq_contributions(seq2seq, run.source_tokens.tolist(), run.target_ids)
    assert len(contributions.encoder) == len(contributions.cross) == 1
    rollout = contributions.rollout()
    assert rollout.shape == (run.n_decoder, run.n_source + run.n_decoder)
    np.testing.assert_allclose(rollout, rollout_by_the_formula(contributions), atol=1e-12)


def test_ffn_shares_of_a_small_state_and_of_cancelling_parts_are_the_proximity_formula():
    """Shares are proximities over their total however small the state; a state neither part is
    close to (the parts cancel) gets 0 and 0, not 0 / 0. By hand: y = (0.3, 0) from residual
    (0.2, 0) and FFN (0.1, 0): proximities 0.3 − 0.2 = 0.1 (FFN), 0.3 − 0.1 = 0.2 (residual)."""
    residual = torch.tensor([[[0.2, 0.0], [2.0, 0.0]]], dtype=torch.float64)
    mlp_out = torch.tensor([[[0.1, 0.0], [-2.0, 0.0]]], dtype=torch.float64)
    record = {"residual": residual, "mlp_out": mlp_out, "whole": residual + mlp_out}
    plain = torch.nn.Identity()
    shares = _ffn_block(_FfnSpec(plain, plain, plain, None), record, "FFN")
    np.testing.assert_allclose(shares.ffn, [1 / 3, 0.0], atol=1e-12)
    np.testing.assert_allclose(shares.residual, [2 / 3, 0.0], atol=1e-12)


@pytest.mark.parametrize("size", [0.0, 100.0])
def test_parts_are_refused_past_a_tolerance_relative_to_the_state(size):
    """Allowed: 1e-4 × (1 + max |state|), so float32 rounding on large states passes."""
    whole = torch.tensor([[0.0, -size]], dtype=torch.float64)
    allowed = 1e-4 * (1 + size)
    _check_sum(whole, whole + 0.9 * allowed, "block")
    with pytest.raises(UnsupportedModelError, match=r"^block: the parts do not add up .* \(off by "):
        _check_sum(whole, whole + 1.1 * allowed, "block")

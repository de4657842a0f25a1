"""The fast proximity kernel against the direct formula."""

from __future__ import annotations

import pytest
import torch

import llm_flow
from llm_flow.errors import ArgumentError
from llm_flow.routes import proximity
from llm_flow.models.run import CausalPattern
from llm_flow.routes.proximity import AttentionLayer, attention_proximities, head_proximities, vector_proximity


def test_vector_proximity_by_hand():
    # ||y||_1 = 4, ||y - z||_1 = |2| + |1| + |-0.5| = 3.5
    assert float(vector_proximity(torch.tensor([3.0, -1.0, 0.0]), torch.tensor([1.0, -2.0, 0.5]))) == 0.5
    # a part pointing away from the whole has no proximity (clamped at 0, not negative)
    assert float(vector_proximity(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]))) == 0.0
    # the whole itself has full proximity
    y = torch.tensor([0.5, -2.0, 4.0])
    assert float(vector_proximity(y, y)) == pytest.approx(6.5)


def direct(whole, gain, vectors, weights, positions):
    """Materialise every part in float64 and apply the definition."""
    g = torch.ones_like(whole) if gain is None else gain
    parts = weights.permute(0, 2, 1)[..., None].double() * (vectors[None].double() * g[:, None, None, :].double())
    y = whole.double()[:, None, None, :]
    prox = (y.abs().sum(-1) - (y - parts).abs().sum(-1)).clamp_min(0)
    mask = torch.arange(vectors.shape[0])[None, :] <= positions[:, None]
    return prox * mask[..., None]


def post_norm_gains(gen: torch.Generator, n_rows: int, d_model: int) -> torch.Tensor:
    """Elementwise gains, some negative and one coordinate 0 (where no part can count)."""
    gain = torch.rand(n_rows, d_model, generator=gen) * 3 - 0.5
    gain[:, 7] = 0.0
    return gain


def random_case(seed, n_rows=6, n_sources=40, n_heads=3, d_model=96, with_gain=False):
    """Parts comparable to the whole, and wholes with many tiny coordinates, so the correction
    term of the fast kernel is exercised often (and sometimes a part overshoots the whole)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(d_model, generator=gen)
    whole = base + 0.3 * torch.randn(n_rows, d_model, generator=gen)
    whole[:, ::3] *= 1e-3
    whole[:, 5] = 0.0
    scale = torch.rand(n_sources, n_heads, 1, generator=gen) * 4
    vectors = scale * (base + torch.randn(n_sources, n_heads, d_model, generator=gen))
    weights = torch.rand(n_rows, n_heads, n_sources, generator=gen) ** 4
    positions = torch.randint(0, n_sources, (n_rows,), generator=gen)
    positions[0] = n_sources - 1
    gain = post_norm_gains(gen, n_rows, d_model) if with_gain else None
    return whole, gain, vectors, weights, positions


@pytest.mark.parametrize("with_gain", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_fast_kernel_equals_definition(seed, with_gain):
    case = random_case(seed, with_gain=with_gain)
    expected = direct(*case)
    fast = head_proximities(*case, method="numba")
    plain = head_proximities(*case, method="torch")
    assert fast.shape == expected.shape
    torch.testing.assert_close(fast.double(), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(plain.double(), expected, atol=2e-5, rtol=1e-5)
    assert (expected > 0).float().mean() > 0.1, "the case should have many non-zero proximities"


def factored_case(seed, n_kv, with_gain, n_sources=40, n_heads=4, d_head=8, d_model=48):
    """A random layer in factored form and query rows in scrambled order with gaps. The wholes are
    built from the parts (plus noise, many tiny coordinates) so parts often overshoot the whole in
    some coordinates and the correction term matters."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n_sources, n_kv, d_head, generator=gen)
    w_o = torch.randn(n_heads, d_head, d_model, generator=gen) / d_head**0.5
    scores = torch.randn(n_heads, n_sources, n_sources, generator=gen) * 3
    causal = torch.ones(n_sources, n_sources, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    layer = AttentionLayer.build(values, w_o, CausalPattern(pattern))
    positions = torch.tensor([n_sources - 1, 3, 17, 0, 29, 11])
    weights = layer.pattern.rows(positions, n_sources)  # [r, H, S]
    vectors = layer.vectors.contiguous()  # [S, H, d]
    attention_out = torch.einsum("rhs,shd->rd", weights, vectors)
    whole = attention_out + 0.5 * torch.randn(len(positions), d_model, generator=gen)
    whole[:, ::3] *= 1e-3
    gain = post_norm_gains(gen, len(positions), d_model) if with_gain else None
    return whole, gain, layer, positions, vectors, weights


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("with_gain", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_factored_path_equals_definition(seed, with_gain, n_kv):
    """The d_head-sized linear term plus correction gives the definition, for grouped heads,
    post-norm gains and rows in any order."""
    whole, gain, layer, positions, vectors, weights = factored_case(seed, n_kv, with_gain)
    expected = direct(whole, gain, vectors, weights, positions)
    for method in ("numba", "torch"):
        result = attention_proximities(whole, gain, layer, positions, method=method)
        torch.testing.assert_close(result.double(), expected, atol=2e-5, rtol=1e-5)
    g = torch.ones_like(whole) if gain is None else gain
    signed_gain = (torch.where(whole >= 0, 1.0, -1.0) * g).double()
    linear_only = torch.einsum("rhs,rd,shd->rsh", weights.double(), signed_gain, vectors.double())
    corrected = (linear_only.clamp_min(0) - expected).abs() > 1e-3
    assert corrected.float().mean() > 0.05, "the case should exercise the correction term"
    assert (expected > 0).float().mean() > 0.05


def late_rows_case(seed, n_kv, with_gain, n_sources=300, n_heads=4, d_head=8, d_model=96):
    """A route's situation on a long prompt: a few late query rows, attention spread over many
    sources, wholes larger than any one part except in some tiny coordinates (where parts
    overshoot, so the correction matters)."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n_sources, n_kv, d_head, generator=gen)
    w_o = torch.randn(n_heads, d_head, d_model, generator=gen) / d_head**0.5
    scores = torch.randn(n_heads, n_sources, n_sources, generator=gen) * 2
    causal = torch.ones(n_sources, n_sources, dtype=torch.bool).tril()
    pattern = CausalPattern(scores.masked_fill(~causal, float("-inf")).softmax(-1))
    positions = torch.tensor([n_sources - 1, 250, 180])
    whole = 5 * torch.randn(len(positions), d_model, generator=gen)
    whole[:, ::8] *= 1e-2
    gain = post_norm_gains(gen, len(positions), d_model) if with_gain else None
    return whole, gain, values, w_o, pattern, positions


@pytest.mark.parametrize("n_kv", [4, 1])
@pytest.mark.parametrize("with_gain", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_coordinates_no_part_can_reach_are_left_out(monkeypatch, seed, with_gain, n_kv):
    """A few rows get vo only in the coordinates where the Cauchy–Schwarz bound says a part can
    exceed its whole: the definition's proximities and those made with vo in every coordinate,
    without ever making vo in every coordinate."""
    monkeypatch.setattr(proximity, "_FEW_COORDINATES", 1.0)  # the restricted path whenever it leaves any out
    whole, gain, values, w_o, pattern, positions = late_rows_case(seed, n_kv, with_gain)
    layer = AttentionLayer.build(values, w_o, pattern)
    full = AttentionLayer.build(values, w_o, pattern)
    assert (layer.bound >= full.vmax).all(), "the bound is above max |vo| everywhere"
    weights = pattern.rows(positions, pattern.n_tokens)
    coords, _, _ = layer.correction_vectors(proximity._key(whole, gain), weights)
    assert 0 < len(coords) < 0.7 * whole.shape[1], "the case leaves coordinates out"
    result = attention_proximities(whole, gain, layer, positions, method="numba")
    assert "vectors_t" not in vars(layer), "vo in every coordinate was made"
    expected = direct(whole, gain, full.vectors, weights, positions)
    torch.testing.assert_close(result.double(), expected, atol=2e-6, rtol=1e-6)
    full.vectors_t  # made first: every coordinate is used
    torch.testing.assert_close(result, attention_proximities(whole, gain, full, positions, method="numba"), atol=1e-6, rtol=0)
    signed_gain = torch.where(whole >= 0, 1.0, -1.0) * (1 if gain is None else gain)
    linear_only = torch.einsum("rhs,rd,shd->rsh", weights.double(), signed_gain.double(), full.vectors.double())
    assert ((linear_only.clamp_min(0) - expected).abs() > 1e-6).sum() > 50, "the correction should matter"


def test_factored_layer_builds_the_head_vectors():
    whole, gain, layer, positions, vectors, weights = factored_case(0, n_kv=2, with_gain=False)
    for head in range(4):
        torch.testing.assert_close(layer.vectors[:, head], layer.values[:, head // 2] @ layer.w_o[head])
    torch.testing.assert_close(layer.vmax, layer.vectors.abs().amax(-1).T)


@pytest.mark.parametrize("n_words", [2, 25, 80])
def test_fast_path_equals_straightforward_path_on_models(tiny_models, monkeypatch, n_words):
    """Same contributions (to 1e-5) from both kernels, at several prompt lengths."""
    prompt = " ".join(["the capital of France is Paris and"] * n_words)[: n_words * 6]
    for family in ("gpt2", "llama", "gemma2", "gpt_neox"):
        run = tiny_models(family).run(prompt)
        results = {}
        for method in ("numba", "torch"):
            monkeypatch.setenv(proximity.METHOD_ENV, method)
            results[method] = [
                llm_flow.attention_contributions(run, layer) for layer in range(run.n_layers)
            ]
        for (fast_heads, fast_res), (plain_heads, plain_res) in zip(results["numba"], results["torch"]):
            torch.testing.assert_close(fast_heads, plain_heads, atol=1e-5, rtol=0)
            torch.testing.assert_close(fast_res, plain_res, atol=1e-5, rtol=0)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown proximity method"):
        head_proximities(*random_case(0), method="cuda-magic")


def test_tensors_off_the_cpu_take_the_torch_path():
    """`auto` (the default) must not hand a GPU tensor to the numba kernel, which reads CPU
    memory only. The meta device stands in for CUDA here: it has shapes but no data, so any
    attempt to read it as a NumPy array fails."""
    whole, gain, layer, positions, vectors, weights = factored_case(0, n_kv=2, with_gain=True)
    meta = torch.device("meta")
    meta_layer = AttentionLayer.build(layer.values.to(meta), layer.w_o.to(meta), CausalPattern(layer.pattern.dense().to(meta)))
    result = attention_proximities(whole.to(meta), gain.to(meta), meta_layer, positions)
    assert result.device == meta and result.shape == (len(positions), int(positions.max()) + 1, 4)
    result = head_proximities(whole.to(meta), gain.to(meta), vectors.to(meta), weights.to(meta), positions)
    assert result.device == meta and result.shape == (len(positions), vectors.shape[0], 4)
    with pytest.raises(ArgumentError, match="the numba kernel runs on the CPU only; use 'torch' or 'auto' for meta tensors"):
        attention_proximities(whole.to(meta), gain.to(meta), meta_layer, positions, method="numba")


def test_the_kernel_variable_chooses_the_path_unless_a_method_is_given(monkeypatch):
    """LLM_FLOW_KERNEL replaces `auto` only: a value it cannot use is refused by name, and a method
    the caller names explicitly is not overridden."""
    whole, gain, layer, positions, vectors, weights = factored_case(1, n_kv=1, with_gain=False)
    monkeypatch.setenv(proximity.METHOD_ENV, "fast")
    for compute in (
        lambda method: attention_proximities(whole, gain, layer, positions, method=method),
        lambda method: head_proximities(whole, gain, vectors, weights, positions, method=method),
    ):
        with pytest.raises(ArgumentError, match=r"^unknown proximity method 'fast': use 'auto', 'numba' or 'torch'$"):
            compute("auto")
        expected = direct(whole, gain, vectors, weights, positions)
        for method in ("numba", "torch"):
            torch.testing.assert_close(compute(method).double(), expected, atol=2e-5, rtol=1e-5)


def test_an_unknown_method_is_refused_by_attention_proximities():
    whole, gain, layer, positions, _, _ = factored_case(0, n_kv=2, with_gain=False)
    with pytest.raises(ArgumentError, match="unknown proximity method 'cuda-magic'"):
        attention_proximities(whole, gain, layer, positions, method="cuda-magic")


def test_parts_that_never_exceed_their_whole_need_no_coordinate():
    """Wholes far larger than any part in every coordinate (an attention output small beside the
    residual stream, as in trained models): no coordinate is needed for the correction, and the
    proximities are the linear term alone, as the definition gives."""
    whole, gain, values, w_o, pattern, positions = late_rows_case(0, n_kv=1, with_gain=False)
    whole = whole.sign() * (whole.abs() + 1e3)
    layer = AttentionLayer.build(values, w_o, pattern)
    weights = pattern.rows(positions, pattern.n_tokens)
    coords, vectors_t, vmax = layer.correction_vectors(proximity._key(whole, gain), weights)
    assert len(coords) == 0 and vectors_t.shape == (4, 0, pattern.n_tokens)
    assert vmax.shape == (4, pattern.n_tokens) and not vmax.any()
    result = attention_proximities(whole, gain, layer, positions, method="numba")
    full = AttentionLayer.build(values, w_o, pattern)
    expected = direct(whole, gain, full.vectors, weights, positions)
    torch.testing.assert_close(result.double(), expected, atol=1e-4, rtol=1e-6)
    assert (expected > 0).float().mean() > 0.3


def test_large_post_norm_gains_keep_every_coordinate_that_counts(monkeypatch):
    """With a post-norm gain above 1 a part can exceed its whole where |y_d| alone says it cannot
    (the part is scaled by the gain, the whole is not): the coordinates a route's rows need are
    chosen by |y_d| / |g_d|."""
    monkeypatch.setattr(proximity, "_FEW_COORDINATES", 1.0)
    whole, gain, values, w_o, pattern, positions = late_rows_case(2, n_kv=4, with_gain=True)
    gain, whole = gain.abs() * 20 + 1, whole * 20
    layer = AttentionLayer.build(values, w_o, pattern)
    weights = pattern.rows(positions, pattern.n_tokens)
    coords, _, _ = layer.correction_vectors(proximity._key(whole, gain), weights)
    assert 0 < len(coords) < whole.shape[1], "the case leaves coordinates out"
    result = attention_proximities(whole, gain, layer, positions, method="numba")
    expected = direct(whole, gain, AttentionLayer.build(values, w_o, pattern).vectors, weights, positions)
    torch.testing.assert_close(result.double(), expected, atol=2e-5, rtol=1e-6)


def test_the_bound_holds_where_cauchy_schwarz_is_tight():
    """With one-dimensional heads |v . W_O[:, d]| is exactly |v| |W_O[:, d]|: the bound on max |vo|
    equals it, and a coordinate where a part exceeds its whole by less than 0.1 % still counts."""
    gen = torch.Generator().manual_seed(3)
    n_sources, d_model = 5, 16
    values = torch.rand(n_sources, 1, 1, generator=gen) + 0.5
    w_o = torch.randn(1, 1, d_model, generator=gen)
    pattern = CausalPattern(torch.ones(1, n_sources, n_sources).tril() / torch.arange(1, n_sources + 1)[:, None])
    layer = AttentionLayer.build(values, w_o, pattern)
    full = AttentionLayer.build(values, w_o, pattern)
    torch.testing.assert_close(layer.bound, full.vmax * proximity._BOUND_MARGIN)
    positions = torch.tensor([n_sources - 1])
    weights = pattern.rows(positions, n_sources)  # [1, 1, S]
    top = int(full.vectors[-1, 0].abs().argmax())
    part = weights[0, 0, -1] * full.vectors[-1, 0]  # the last source's part
    whole = 100 * part.abs().max() * torch.ones(1, d_model)
    whole[0, top] = part[top] * (1 - 4e-4)  # the part exceeds the whole here by 0.04 %
    result = attention_proximities(whole, None, layer, positions, method="numba")
    expected = direct(whole, None, full.vectors, weights, positions)
    torch.testing.assert_close(result.double(), expected, atol=1e-6, rtol=1e-6)

"""The maths of docs/method.md on every supported family, against an independent reference."""

from __future__ import annotations

import pytest
import torch

import llm_flow
from llm_flow.routes.contributions import attention_parts, contribution_rows, ffn_parts
from tests.conftest import PROMPT
from tests.reference import assert_layer_matches, reference_contributions, reference_layers, reference_neurons
from tests.tiny_models import FAMILIES

ATOL = 1e-4


@pytest.fixture(scope="module")
def runs(tiny_models):
    return {family: tiny_models(family).run(PROMPT) for family in FAMILIES}


@pytest.fixture(scope="module")
def references(runs, tiny_folders):
    return {
        family: reference_layers(str(tiny_folders[family]), runs[family].tokens.tolist()) for family in FAMILIES
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_parts_reconstruct_the_whole(runs, family):
    """Residual + every head part + unassigned bias (+ FFN for parallel blocks) == the whole."""
    run = runs[family]
    for layer in range(run.n_layers):
        for position in (0, run.n_tokens // 2, run.n_tokens - 1):
            p = attention_parts(run, layer, position)
            rebuilt = p.residual + p.pieces.sum((0, 1)) + p.bias + (p.ffn if p.ffn is not None else 0)
            assert torch.allclose(rebuilt, p.whole, atol=1e-4, rtol=1e-5), (family, layer, position)
            f = ffn_parts(run, layer, position)
            rebuilt = f.residual + f.pieces.sum(0) + f.bias
            assert torch.allclose(rebuilt, f.whole, atol=1e-4, rtol=1e-5), (family, layer, position)


@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_are_a_distribution(runs, family):
    run = runs[family]
    for layer in range(run.n_layers):
        c_heads, c_res = llm_flow.attention_contributions(run, layer)
        c_ffn, c_res2 = llm_flow.ffn_contributions(run, layer)
        assert (c_heads >= 0).all() and (c_res >= 0).all() and (c_ffn >= 0).all() and (c_res2 >= 0).all()
        future = torch.ones(run.n_tokens, run.n_tokens).triu(1).bool()
        assert (c_heads[future] == 0).all(), "a source after the query position got a share"
        if run.parallel:
            assert torch.equal(c_res, c_res2)
            totals = c_heads.sum((1, 2)) + c_res + c_ffn
        else:
            totals = c_heads.sum((1, 2)) + c_res
            assert torch.allclose(c_ffn + c_res2, torch.ones(run.n_tokens), atol=1e-5)
        assert torch.allclose(totals, torch.ones(run.n_tokens), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_match_independent_reference(runs, references, family):
    run = runs[family]
    assert len(references[family]) == run.n_layers
    for layer, ref in enumerate(references[family]):
        assert_layer_matches(run, layer, ref, ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_contributions_match_independent_reference(runs, references, family):
    run = runs[family]
    for layer in (0, run.n_layers - 1):
        for position in (1, run.n_tokens - 1):
            ref_neurons, ref_rest = reference_neurons(references[family][layer], position, run.parallel)
            c_neurons, c_rest = llm_flow.neuron_contributions(run, layer, position)
            torch.testing.assert_close(c_neurons.double(), ref_neurons, atol=ATOL, rtol=0)
            assert abs(c_rest - float(ref_rest)) < ATOL
            assert abs(float(c_neurons.sum()) + c_rest - 1) < 1e-5


def assert_rows_match(rows, positions, run, ref) -> None:
    """Rows of the given positions equal the reference's: the row's own sources only, and an FFN
    share in parallel blocks alone."""
    c_heads, c_res, c_ffn, _ = reference_contributions(ref, run.parallel)
    for row, position in zip(rows, positions, strict=True):
        sources = run.n_tokens if run.model.info.bidirectional else position + 1
        assert row.position == position and row.heads.shape == (sources, c_heads.shape[-1])
        torch.testing.assert_close(row.heads.double(), c_heads[position, :sources], atol=ATOL, rtol=0)
        assert abs(row.residual - float(c_res[position])) < ATOL
        assert (row.ffn is None) == (not run.parallel)
        if run.parallel:
            assert abs(row.ffn - float(c_ffn[position])) < ATOL


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])
def test_rows_and_chosen_positions_match_the_reference(tiny_models, references, family):
    """What a route reads (rows and FFN shares of a few positions, in any order), computed row by
    row and read from the whole-layer table, against the direct formula."""
    positions = [5, 0, 2]
    run, tabled = tiny_models(family).run(PROMPT), tiny_models(family).run(PROMPT)
    llm_flow.full_contributions(tabled)
    for layer, ref in enumerate(references[family]):
        for rows in (contribution_rows(run, layer, positions), contribution_rows(tabled, layer, positions)):
            assert_rows_match(rows, positions, run, ref)
        _, _, c_ffn, c_res2 = reference_contributions(ref, run.parallel)
        ffn, residual = llm_flow.ffn_contributions(run, layer, positions)
        torch.testing.assert_close(ffn.double(), c_ffn[positions], atol=ATOL, rtol=0)
        torch.testing.assert_close(residual.double(), c_res2[positions], atol=ATOL, rtol=0)


def scaled(run, scale: float):
    """The run with every residual vector and value multiplied by `scale` (a model without biases:
    its parts still add up to its wholes), and nothing computed on it yet."""
    from dataclasses import replace

    from llm_flow.models.derived import DerivedStore

    names = ("resid_pre", "resid_mid", "resid_post", "values", "mlp_out", "neuron_acts")
    layers = tuple(replace(a, **{n: getattr(a, n) * scale for n in names}) for a in run.layers)
    return replace(run, layers=layers, derived_store=DerivedStore())


@pytest.mark.parametrize("scale", [1e-3, 0.0])
def test_shares_do_not_depend_on_the_size_of_the_residual_stream(runs, scale):
    """A proximity scales with its whole and parts, so shares do not; where every proximity is 0
    (a stream of zeros) every share is 0, not NaN."""
    run = runs["llama"]
    small = scaled(run, scale)
    for layer in range(run.n_layers):
        for ours, theirs in zip(
            (*llm_flow.attention_contributions(small, layer), *llm_flow.ffn_contributions(small, layer)),
            (*llm_flow.attention_contributions(run, layer), *llm_flow.ffn_contributions(run, layer)),
        ):
            torch.testing.assert_close(ours, theirs * (scale > 0), atol=1e-5, rtol=0)
        neurons, rest = llm_flow.neuron_contributions(small, layer, 3)
        ref_neurons, ref_rest = llm_flow.neuron_contributions(run, layer, 3)
        torch.testing.assert_close(neurons, ref_neurons * (scale > 0), atol=1e-5, rtol=0)
        assert rest == pytest.approx(ref_rest * (scale > 0), abs=1e-5)


BIASED = ["gpt2", "gpt_neox", "qwen2", "bert"]  # the families with biases (Qwen2: on q, k and v only)


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """(run, reference layers) of models whose biases are random, not zero as initialised."""
    from tests.tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("biased")

    def load(family):
        folder = str(save_tiny_model(family, root / family, random_biases=True))
        run = llm_flow.load_model(folder).run(PROMPT)
        return run, reference_layers(folder, run.tokens.tolist())

    return {family: load(family) for family in BIASED}


@pytest.mark.parametrize("family", BIASED)
def test_biases_that_belong_to_no_part(biased, family):
    """b_O and the FFN output bias enter the whole but are nobody's part; b_V is in every head's
    part: the parts plus those biases rebuild the whole, and the contributions still equal the
    reference's, where each bias is kept where DESIGN.md §1 puts it."""
    run, references = biased[family]
    for layer, ref in enumerate(references):
        for position in (1, run.n_tokens - 1):
            p, f = attention_parts(run, layer, position), ffn_parts(run, layer, position)
            torch.testing.assert_close(p.bias.double(), ref.attn_bias[position], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(f.bias.double(), ref.neuron_bias[position], atol=1e-5, rtol=1e-5)
            rebuilt = p.residual + p.pieces.sum((0, 1)) + p.bias + (p.ffn if p.ffn is not None else 0)
            assert torch.allclose(rebuilt, p.whole, atol=1e-4, rtol=1e-5)
            assert torch.allclose(f.residual + f.pieces.sum(0) + f.bias, f.whole, atol=1e-4, rtol=1e-5)
            ref_neurons, ref_rest = reference_neurons(ref, position, run.parallel)
            c_neurons, c_rest = llm_flow.neuron_contributions(run, layer, position)
            torch.testing.assert_close(c_neurons.double(), ref_neurons, atol=ATOL, rtol=0)
            assert abs(c_rest - float(ref_rest)) < ATOL
        assert_layer_matches(run, layer, ref, ATOL)
    if family != "qwen2":
        assert float(references[0].attn_bias.abs().max()) > 0.1 and float(references[0].neuron_bias.abs().max()) > 0.1


def test_reference_is_not_trivially_uniform(runs):
    """Guard against a weak test: the tiny models' contributions must differ a lot between parts."""
    c_heads, _ = llm_flow.attention_contributions(runs["llama"], 1)
    last = c_heads[-1]
    assert float(last.max()) > 5 * float(last[last > 0].median())


def test_grouped_query_heads_read_their_own_kv_head(runs, tiny_models):
    """With 4 query heads on 2 KV heads, heads 0-1 share KV head 0 and 2-3 share KV head 1."""
    model = tiny_models("llama")
    assert (model.info.n_heads, model.info.n_kv_heads) == (4, 2)
    run = runs["llama"]
    from llm_flow.routes.contributions import head_vectors

    vectors = head_vectors(run, 0)
    w_o = model.attention_output_weight(0)
    values = run.layers[0].values
    for head, kv_head in [(0, 0), (1, 0), (2, 1), (3, 1)]:
        torch.testing.assert_close(vectors[:, head], values[:, kv_head] @ w_o[head])


def test_rows_cached_on_the_run_are_reused(runs, monkeypatch):
    """A second graph for the same run computes no new attention rows."""
    from llm_flow.routes import contributions
    from llm_flow.routes.graph import build_graph

    run = runs["gpt2"]
    build_graph(run, target=-1, threshold=0.02)
    store = run.derived_store
    before = {key: store.peek(key) for key in store.keys()}
    assert before, "the graph kept its attention rows"
    for name in ("_rows", "_attention_layer"):
        monkeypatch.setattr(contributions, name, lambda *a, **k: pytest.fail("a row was computed again"))
    build_graph(run, target=-1, threshold=0.05)
    assert store.keys() == list(before)
    assert all(store.peek(k) is before[k] for k in before)


def _edge_numbers(graph) -> dict:
    """Every edge's weight, per-head split and residual share, one number per key."""
    numbers = {}
    for u, v, d in graph.edges(data=True):
        for k, value in enumerate([d["weight"], d.get("residual", 0.0), *d.get("heads", [])]):
            numbers[(u, v, d["kind"], k)] = value
    return numbers


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_full_contributions_cover_every_layer_and_serve_later_graphs(tiny_models, family, monkeypatch):
    """The all-positions table equals the per-layer functions, and afterwards a graph for any
    target needs no new attention rows."""
    from llm_flow.routes import contributions

    run = tiny_models(family).run(PROMPT)
    fresh = tiny_models(family).run(PROMPT)  # the same prompt, nothing computed on it yet
    table = llm_flow.full_contributions(run)
    assert len(table) == run.n_layers
    for layer, entry in enumerate(table):
        c_heads, c_res = llm_flow.attention_contributions(run, layer)
        c_ffn, c_res2 = llm_flow.ffn_contributions(run, layer)
        torch.testing.assert_close(entry.heads, c_heads)
        torch.testing.assert_close(entry.residual, c_res)
        torch.testing.assert_close(entry.ffn, c_ffn)
        torch.testing.assert_close(entry.ffn_residual, c_res2)
    # the same graphs as from rows computed as the pruner asks for them (on a run without the table)
    expected = [_edge_numbers(llm_flow.build_graph(fresh, t, threshold=0.01)) for t in range(run.n_tokens)]
    monkeypatch.setattr(contributions, "_rows", lambda *a, **k: pytest.fail("a row was computed again"))
    for target in range(run.n_tokens):
        assert _edge_numbers(llm_flow.build_graph(run, target, threshold=0.01)) == pytest.approx(expected[target], abs=1e-6)
    assert all(a is b for a, b in zip(llm_flow.full_contributions(run), table)), "a second call computes nothing"

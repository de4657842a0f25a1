"""Route checks and ablation on encoders (issue 20): removals through the post-LN norms, sources
after the query, random routes over all T × T pairs. Every intervention is checked against the
same intervention done with plain transformers modules and forward hooks in float64
(tests/hf_interventions.py), which edit the LayerNorm outputs themselves."""

from __future__ import annotations

import random

import pytest
import torch

import llm_flow
from llm_flow.interventions import (
    AttentionPart,
    FfnPart,
    ResidualPart,
    ablated_logits,
    ablation,
    check_edge,
    check_route,
)
from llm_flow.interventions.route import NodeParts, dropped_parts, random_like, route_nodes
from tests.hf_interventions import HfModel, subtracting
from tests.tiny_models import ENCODERS, save_tiny_model

PROMPT = "The capital of France is [MASK]. Mary gave a drink to John."
ATOL = 1e-4  # float32 TransformerLens pass vs float64 HF
HEADED = ["bert", "roberta"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Random biases: with transformers' zero biases, what belongs to no part (L(b_O) + β) is
    zero and a node stripped of its parts would be a zero vector the next norm cannot scale."""
    root = tmp_path_factory.mktemp("encoder-checks")
    return {family: save_tiny_model(family, root / family, random_biases=True) for family in ENCODERS}


@pytest.fixture(scope="module")
def models(folders):
    return {family: llm_flow.load_model(str(folder)) for family, folder in folders.items()}


@pytest.fixture(scope="module")
def runs(models):
    return {family: model.run(PROMPT) for family, model in models.items()}


@pytest.fixture(scope="module")
def hf(folders):
    return {family: HfModel(str(folder), headless=family == "bert_headless") for family, folder in folders.items()}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    diff = (actual.double() - expected).abs().max().item()
    assert diff < ATOL, f"max logit difference {diff:.2e}"


def _changed(actual: torch.Tensor, run) -> None:
    """An edit whose effect is below the tolerance would make an equality test vacuous."""
    assert (actual - run.logits).abs().max().item() > 100 * ATOL


def _mask_route(run, threshold: float):
    """The route of the [MASK] token's prediction."""
    return llm_flow.build_graph(run, run.str_tokens.index("[MASK]"), threshold=threshold)


@pytest.mark.parametrize("family", ENCODERS)
def test_removing_nothing_reproduces_the_run(runs, hf, family):
    run = runs[family]
    logits = ablated_logits(run, ablation(run, []))
    assert (logits - run.logits).abs().max().item() <= 1e-5
    _close(logits, hf[family].logits(run.tokens.tolist()))


@pytest.mark.parametrize("family", ENCODERS)
def test_removing_a_part_from_a_later_token_subtracts_it_after_the_norm(runs, hf, family):
    """The largest part the [MASK] token's A1 node takes from a token to its right: removed as
    L_i(z) = γ/σ_i ⊙ (z − mean z), with σ_i of this pass's whole sum."""
    run = runs[family]
    layer, query = 1, run.str_tokens.index("[MASK]")
    c_heads, _ = llm_flow.attention_contributions(run, layer)
    later = c_heads[query, query + 1 :]  # [sources after the query, H]
    offset, head = divmod(int(later.argmax()), later.shape[1])
    source = query + 1 + offset
    logits = ablated_logits(run, ablation(run, [AttentionPart(layer, query, source, head)]))
    _close(logits, hf[family].logits(run.tokens.tolist(), attention={layer: subtracting([(query, source, head)])}))
    _changed(logits, run)


@pytest.mark.parametrize("family", HEADED)
def test_later_parts_come_from_the_ablated_pass(runs, hf, family):
    """Parts in both layers, sources before and after each query: layer 1's vectors (and its
    norm's σ) are the ones the ablated model computes."""
    run = runs[family]
    T = run.n_tokens
    first = sorted({(i, j, h) for i in range(1, T - 1) for j in (0, i - 1, i + 1) for h in (0, 3)})
    second = [(5, j, h) for j in range(T) for h in (1, 2)] + [(2, T - 1, 0)]
    parts = [AttentionPart(0, *p) for p in first] + [AttentionPart(1, *p) for p in second]
    logits = ablated_logits(run, ablation(run, parts))
    expected = hf[family].logits(run.tokens.tolist(), attention={0: subtracting(first), 1: subtracting(second)})
    _close(logits, expected)
    _changed(logits, run)


def test_an_encoder_that_keeps_stored_patterns_is_ablated_from_its_own_pass(folders, hf):
    """Where the load-time probe keeps stored attention patterns (``recomputed_rows`` off), the
    removed vectors come from the pass's own ``hook_pattern`` and ``hook_v``: parts in both
    layers, sources before and after each query, against the same edits of the LayerNorm outputs
    in plain transformers."""
    model = llm_flow.load_model(str(folders["bert"]))
    model.recomputed_rows = False
    run = model.run(PROMPT)
    T = run.n_tokens
    first = sorted({(i, j, h) for i in range(1, T - 1) for j in (0, i + 1) for h in (0, 3)})
    second = [(5, j, 1) for j in range(T)] + [(2, T - 1, 0)]
    parts = [AttentionPart(0, *p) for p in first] + [AttentionPart(1, *p) for p in second]
    logits = ablated_logits(run, ablation(run, parts))
    expected = hf["bert"].logits(run.tokens.tolist(), attention={0: subtracting(first), 1: subtracting(second)})
    _close(logits, expected)
    _changed(logits, run)


@pytest.mark.parametrize("family", ENCODERS)
def test_a_node_without_its_parts_is_what_belongs_to_no_part(runs, hf, family):
    """Remove every head part and the residual of A0_i: what is left is L_i(b_O) + β₁, exactly
    (the parts and that term add up to the state)."""
    run = runs[family]
    heads, T, i = run.model.info.n_heads, run.n_tokens, 4
    parts = [AttentionPart(0, i, j, h) for j in range(T) for h in range(heads)] + [ResidualPart(0, i, "A")]
    logits = ablated_logits(run, ablation(run, parts))

    def only_the_bias(out, ctx):
        out = out.clone()
        out[i] = ctx.through_norm(ctx.bias, i) + ctx.saved["ln1_bias"]
        return out

    _close(logits, hf[family].logits(run.tokens.tolist(), attention={0: only_the_bias}))
    _changed(logits, run)


@pytest.mark.parametrize("family", ENCODERS)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ffn_zeroed_or_mean_replaced_through_ln2(runs, hf, family, mode):
    """FFN parts of both layers (the last one's edit is what a headless encoder's prediction reads)."""
    run = runs[family]
    positions = [2, run.str_tokens.index("[MASK]")]
    parts = [FfnPart(layer, p) for layer in (0, 1) for p in positions]
    logits = ablated_logits(run, ablation(run, parts, ffn_mode=mode))
    ids = run.tokens.tolist()

    def replace(layer):
        mean = hf[family].ffn_outputs(ids, layer).mean(0)

        def edit(out, ctx):
            out = out.clone()
            for p in positions:
                replacement = torch.zeros_like(mean) if mode == "zero" else mean
                out[p] -= ctx.through_norm(ctx.saved["mlp_out"][p] - replacement, p, "ffn_gain")
            return out

        return edit

    _close(logits, hf[family].logits(ids, ffn={0: replace(0), 1: replace(1)}))
    _changed(logits, run)


@pytest.mark.parametrize("family", HEADED)
def test_residual_parts(runs, hf, family):
    """The residual part of A{l}_i is L_i(resid_pre[i]); that of I{l}_i is L'_i(A{l}_i) with the
    A state of this pass."""
    run = runs[family]
    i = run.n_tokens - 3
    parts = [ResidualPart(0, i, "A"), ResidualPart(1, i, "I"), ResidualPart(1, 2, "A")]
    logits = ablated_logits(run, ablation(run, parts))

    def minus(name, gain, positions):
        def edit(out, ctx):
            out = out.clone()
            for p in positions:
                out[p] -= ctx.through_norm(ctx.saved[name][p], p, gain)
            return out

        return edit

    attention = {0: minus("resid_pre", "gain", [i]), 1: minus("resid_pre", "gain", [2])}
    ffn = {1: minus("resid_mid", "ffn_gain", [i])}
    _close(logits, hf[family].logits(run.tokens.tolist(), attention=attention, ffn=ffn))
    _changed(logits, run)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_removing_the_ffn_and_the_residual_of_one_node_takes_out_both(runs, hf, mode):
    """I1_i without its FFN part and its residual part (a route check drops both when neither
    edge is on the route): ln2 loses L'_i(mlp_out[i] − replacement) + L'_i(A1_i), the sum."""
    run = runs["bert"]
    i = run.str_tokens.index("[MASK]")
    logits = ablated_logits(run, ablation(run, [FfnPart(1, i), ResidualPart(1, i, "I"), FfnPart(1, 2)], mode))
    ids = run.tokens.tolist()
    mean = hf["bert"].ffn_outputs(ids, 1).mean(0)

    def both(out, ctx):
        out = out.clone()
        replacement = torch.zeros_like(mean) if mode == "zero" else mean
        out[i] -= ctx.through_norm(ctx.saved["mlp_out"][i] - replacement + ctx.saved["resid_mid"][i], i, "ffn_gain")
        out[2] -= ctx.through_norm(ctx.saved["mlp_out"][2] - replacement, 2, "ffn_gain")
        return out

    _close(logits, hf["bert"].logits(ids, ffn={1: both}))
    _changed(logits, run)


def test_a_source_after_the_query_is_a_part_only_in_an_encoder(runs, tiny_models):
    run = runs["bert"]
    assert ablation(run, [AttentionPart(0, 1, run.n_tokens - 1, 0)]).n_parts == 1
    decoder = tiny_models("gpt2").run(PROMPT)
    with pytest.raises(llm_flow.ArgumentError, match="source 5 comes after query 1"):
        ablation(decoder, [AttentionPart(0, 1, 5, 0)])
    with pytest.raises(llm_flow.ArgumentError, match="token positions must be"):
        ablation(run, [AttentionPart(0, 1, run.n_tokens, 0)])


def _hf_route_only_logits(run, model: HfModel, graph, ffn_mode: str) -> torch.Tensor:
    """Route only, in HF: every A/I node of the route rebuilt from the parts its graph edges name
    (read here from the edges directly), each through its norm at this pass's σ, plus what
    belongs to no part (L(b_O) + β₁ for A, β₂ for I)."""
    heads, ids = run.model.info.n_heads, run.tokens.tolist()
    sources: dict[tuple[int, int], set[int]] = {}
    residual_kept, ffn_kept = set(), set()
    for u, v, data in graph.edges(data=True):
        dest = graph.nodes[v]
        key = (dest["kind"], dest["layer"], dest["position"])
        if data["kind"] == "attention":
            sources.setdefault(key[1:], set()).add(graph.nodes[u]["position"])
        if data["kind"] == "residual" or (data["kind"] == "attention" and graph.nodes[u]["position"] == key[2]):
            residual_kept.add(key)
        if data["kind"] == "ffn" and dest["kind"] == "resid_post":
            ffn_kept.add(key[1:])
    a_nodes = [(d["layer"], d["position"]) for _, d in graph.nodes(data=True) if d["kind"] == "resid_mid"]
    i_nodes = [(d["layer"], d["position"]) for _, d in graph.nodes(data=True) if d["kind"] == "resid_post"]

    def attention_edit(layer):
        def edit(out, ctx):
            out = out.clone()
            for lay, i in a_nodes:
                if lay == layer:
                    state = ctx.through_norm(ctx.bias, i) + ctx.saved["ln1_bias"]
                    state = state + sum((ctx.part(i, j, h) for j in sources.get((lay, i), ()) for h in range(heads)), 0)
                    if ("resid_mid", lay, i) in residual_kept:
                        state = state + ctx.through_norm(ctx.saved["resid_pre"][i], i)
                    out[i] = state
            return out

        return edit

    def ffn_edit(layer):
        mean = model.ffn_outputs(ids, layer).mean(0) if ffn_mode == "mean" else None

        def edit(out, ctx):
            out = out.clone()
            for lay, i in i_nodes:
                if lay == layer:
                    ffn = ctx.saved["mlp_out"][i] if (lay, i) in ffn_kept else mean
                    state = ctx.saved["ln2_bias"].clone()
                    if ffn is not None:
                        state = state + ctx.through_norm(ffn, i, "ffn_gain")
                    if ("resid_post", lay, i) in residual_kept:
                        state = state + ctx.through_norm(ctx.saved["resid_mid"][i], i, "ffn_gain")
                    out[i] = state
            return out

        return edit

    layers = sorted({lay for lay, _ in a_nodes + i_nodes})
    return model.logits(ids, attention={l: attention_edit(l) for l in layers}, ffn={l: ffn_edit(l) for l in layers})


@pytest.mark.parametrize("family", HEADED)
@pytest.mark.parametrize("ffn_mode", ["zero", "mean"])
def test_route_only_rebuilds_each_node_from_its_route_edges(runs, hf, family, ffn_mode):
    """The [MASK] token's route: route only against HF rebuilding every node of the route from
    its kept parts; the route reads tokens after the [MASK] (a decoder's could not)."""
    run = runs[family]
    graph = _mask_route(run, 0.05)
    mask = run.str_tokens.index("[MASK]")
    assert graph.graph["target"] == mask
    assert any(graph.nodes[u]["position"] > graph.nodes[v]["position"] for u, v in graph.edges)
    logits = ablated_logits(run, dropped_parts(run, route_nodes(run, graph), ffn_mode))
    _close(logits, _hf_route_only_logits(run, hf[family], graph, ffn_mode))
    _changed(logits, run)


@pytest.mark.parametrize("family", ENCODERS)
def test_keeping_every_edge_reproduces_the_prediction(runs, family):
    """A route with every node and every edge of every layer (all T sources of each query): route
    only removes nothing and gives the unmodified logits."""
    run = runs[family]
    T, every = run.n_tokens, set(range(run.n_tokens))
    nodes = [NodeParts(l, i, "A", True, T, set(every), residual=True) for l in range(run.n_layers) for i in range(T)]
    nodes += [NodeParts(l, i, "I", False, T, residual=True, ffn=True) for l in range(run.n_layers) for i in range(T)]
    complete = dropped_parts(run, nodes, "zero")
    assert complete.n_parts == 0
    assert (ablated_logits(run, complete) - run.logits).abs().max().item() <= 1e-5
    one_less = dropped_parts(run, [NodeParts(0, 3, "A", True, T, every - {T - 1}, residual=True)], "zero")
    assert one_less.n_parts == run.model.info.n_heads  # the last source, in every head, is all it drops
    assert (ablated_logits(run, one_less) - run.logits).abs().max().item() > 100 * ATOL


@pytest.mark.parametrize("family", HEADED)
def test_route_check_against_transformers(runs, hf, family):
    """Route removed: every attention part of the route's edges (sources on both sides of each
    query) and every FFN of its I nodes taken out in HF; the check's numbers are those logits'."""
    run, model = runs[family], hf[family]
    graph = _mask_route(run, 0.05)
    position, ids = graph.graph["target"], run.tokens.tolist()
    token = int(torch.argsort(run.logits[position], descending=True)[1])
    check = check_route(run, graph, draws=1, seed=3, token=token)
    heads = run.model.info.n_heads
    cut: dict[int, list] = {}
    ffn_cut: dict[int, list[int]] = {}
    for u, v, data in graph.edges(data=True):
        dest = graph.nodes[v]
        if data["kind"] == "attention":
            i, j = dest["position"], graph.nodes[u]["position"]
            cut.setdefault(dest["layer"], []).extend((i, j, h) for h in range(heads))
        elif data["kind"] == "ffn" and dest["kind"] == "resid_post":
            ffn_cut.setdefault(dest["layer"], []).append(dest["position"])

    def no_ffn(positions):
        def edit(out, ctx):
            out = out.clone()
            for p in positions:
                out[p] -= ctx.through_norm(ctx.saved["mlp_out"][p], p, "ffn_gain")
            return out

        return edit

    removed = model.logits(
        ids, attention={l: subtracting(t) for l, t in cut.items()}, ffn={l: no_ffn(p) for l, p in ffn_cut.items()}
    )[position]
    assert check.route_removed.logit == pytest.approx(float(removed[token]), abs=ATOL)
    assert check.route_removed.rank == int((removed > removed[token]).sum()) + 1
    assert check.n_route_parts == sum(map(len, cut.values())) + sum(map(len, ffn_cut.values()))
    assert abs(check.route_removed.logit - check.unmodified.logit) > 100 * ATOL
    only = _hf_route_only_logits(run, model, graph, "zero")[position]
    assert check.route_only.logit == pytest.approx(float(only[token]), abs=ATOL)


def test_removing_an_edge_from_a_later_token(runs, hf):
    run, model = runs["bert"], hf["bert"]
    graph = _mask_route(run, 0.05)
    later = [(u, v) for u, v, d in graph.edges(data=True)
             if d["kind"] == "attention" and graph.nodes[u]["position"] > graph.nodes[v]["position"]]  # fmt: skip
    source, dest = max(later, key=lambda e: graph.edges[e]["weight"])
    removal = check_edge(run, graph, source, dest)
    i, j, layer = graph.nodes[dest]["position"], graph.nodes[source]["position"], graph.nodes[dest]["layer"]
    heads = run.model.info.n_heads
    assert removal.n_parts == heads
    expected = model.logits(run.tokens.tolist(), attention={layer: subtracting([(i, j, h) for h in range(heads)])})
    assert removal.removed.logit == pytest.approx(float(expected[graph.graph["target"], removal.token_id]), abs=ATOL)


def test_random_routes_draw_every_pair_of_the_encoder(runs):
    """Route removed's baseline draws from all T × T × H (query, source, head) triples of the
    layer, sources after the query included; route only's keeps as many (source, head) pairs per
    node, drawn from all T sources."""
    run = runs["bert"]
    heads, n = run.model.info.n_heads, run.n_tokens
    every = {(i, j, h) for i in range(n) for j in range(n) for h in range(heads)}
    route = ablation(run, [AttentionPart(1, *t) for t in sorted(every)[::7]])
    rng, seen = random.Random(0), set()
    for _ in range(200):
        triples = {tuple(t) for t in random_like(run, route, rng).layers[1].attention.tolist()}
        assert len(triples) == len(route.layers[1].attention) and triples <= every
        seen |= triples
    assert seen == every, f"{len(every - seen)} parts were never drawn"

    graph = _mask_route(run, 0.05)
    nodes = route_nodes(run, graph)
    node = next(n for n in nodes if n.node == "A" and n.sources)
    assert node.n_sources == run.n_tokens
    kept_sources = set()
    for _ in range(100):
        look = dropped_parts(run, [node], "zero", rng).layers[node.layer]
        dropped = {tuple(t) for t in look.attention.tolist()}
        assert len(dropped) == (n - len(node.sources)) * heads
        kept_sources |= {j for i in [node.position] for j in range(n) for h in range(heads) if (i, j, h) not in dropped}
    assert max(kept_sources) > node.position and kept_sources == set(range(n))


def test_a_sentence_pair_is_re_run_with_its_token_types(models):
    """The ablated pass reads "A [SEP] B" with B's token types, as the run did (without them the
    logits move far beyond the tolerance)."""
    model = models["bert"]
    run = model.run("The capital of France is [MASK]. [SEP] Paris is a city.")
    logits = ablated_logits(run, ablation(run, []))
    assert (logits - run.logits).abs().max().item() <= 1e-5
    with torch.inference_mode():
        untyped = model.bridge(run.tokens[None], return_type="logits")[0]
    assert (untyped - run.logits).abs().max().item() > 100 * ATOL


def test_patching_values_into_an_encoder_is_refused(runs):
    from llm_flow.interventions.parts import Ablation, LayerRemoval

    run = runs["bert"]
    added = torch.zeros(run.n_tokens, run.model.info.d_model)
    no_rows = torch.zeros(0, 3, dtype=torch.long)
    patched = Ablation(run.n_tokens, {0: LayerRemoval(no_rows, frozenset({1}), frozenset(), frozenset(), added)})
    with pytest.raises(llm_flow.UnsupportedModelError, match="implemented for decoders only"):
        ablated_logits(run, patched)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_a_bfloat16_encoder_is_ablated_in_its_own_dtype(folders, runs, mode):
    """A model loaded in bfloat16 on the CPU (``load_model(dtype="bfloat16")``): the removed
    vectors go back into the pass in the model's dtype (a float32 state reaching a bfloat16
    layer stops the pass), and what the removal changes in the logits points the way it does in
    the float32 model (bfloat16 rounding moves single logits by up to 0.5 here, the run's too)."""
    run32 = runs["bert"]
    run16 = llm_flow.load_model(str(folders["bert"]), dtype="bfloat16").run(PROMPT)
    parts = [AttentionPart(0, 4, j, h) for j in range(run32.n_tokens) for h in (0, 1)]
    parts += [ResidualPart(0, 2, "A"), ResidualPart(1, 3, "I"), FfnPart(1, 5)]
    expected = ablated_logits(run32, ablation(run32, parts, mode)) - run32.logits
    logits = ablated_logits(run16, ablation(run16, parts, mode))
    assert logits.dtype == torch.float32
    change = (logits - run16.logits.float()).flatten()
    assert torch.cosine_similarity(change, expected.flatten(), dim=0).item() > 0.95

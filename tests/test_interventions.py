"""Interventions on the forward pass, against plain `transformers` with forward hooks
(tests/hf_interventions.py, float64, no TransformerLens), and route checks on their parts."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import llm_flow
from llm_flow.interventions import (
    AttentionPart,
    FfnPart,
    Outcome,
    ResidualPart,
    RouteCheck,
    ablated_logits,
    ablation,
    check_edge,
    check_route,
    threshold_curve,
)
from llm_flow.interventions.route_checks import percentile
from llm_flow.interventions.route import dropped_parts, kept_parts, random_like, route_nodes
from tests.conftest import PROMPT
from tests.hf_interventions import HfModel, subtracting
from tests.tiny_models import FAMILIES, save_tiny_model

ATOL = 1e-4  # float32 TransformerLens pass vs float64 HF, logits up to ~10 (seen: up to 6.5e-5)


class PerFamily(dict):
    """Built for a family the first time a test asks for it (a test of one family loads one)."""

    def __init__(self, make) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, family: str):
        self[family] = value = self._make(family)
        return value


@pytest.fixture(scope="module")
def runs(tiny_models):
    return PerFamily(lambda family: tiny_models(family).run(PROMPT))


@pytest.fixture(scope="module")
def hf(tiny_folders):
    return PerFamily(lambda family: HfModel(str(tiny_folders[family])))


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    diff = (actual.double() - expected).abs().max().item()
    assert diff < ATOL, f"max logit difference {diff:.2e}"


def _changed(actual: torch.Tensor, run) -> None:
    """An edit whose effect is below the tolerance would make an equality test vacuous."""
    assert (actual - run.logits).abs().max().item() > 100 * ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_nothing_reproduces_the_run(runs, hf, family):
    run = runs[family]
    logits = ablated_logits(run, ablation(run, []))
    # the Run's pass attends with SDPA, the intervention's eagerly: float32 rounding apart
    assert (logits - run.logits).abs().max().item() <= 3e-5
    _close(logits, hf[family].logits(run.tokens.tolist()))


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_every_attention_part_leaves_the_bias(runs, hf, family):
    """All parts of layers 0 and 2 == those attention outputs set to their bias (post-normed for
    Gemma 2, whose bias-free attention then adds nothing)."""
    run = runs[family]
    heads = run.model.info.n_heads
    T = run.n_tokens
    parts = [AttentionPart(l, i, j, h) for l in (0, 2) for i in range(T) for j in range(i + 1) for h in range(heads)]
    logits = ablated_logits(run, ablation(run, parts))

    def bias_only(out, ctx):
        return torch.stack([ctx.attention_bias(i) for i in range(T)]).expand_as(out)

    _close(logits, hf[family].logits(run.tokens.tolist(), attention={0: bias_only, 2: bias_only}))
    _changed(logits, run)


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_one_part_subtracts_its_vector(runs, hf, family):
    """The part with the largest contribution to the last token's A1 node: its removal moves the
    logits far beyond the tolerance (a removal that did nothing would fail)."""
    run = runs[family]
    layer, query = 1, run.n_tokens - 1
    c_heads, _ = llm_flow.attention_contributions(run, layer)
    source, head = divmod(int(c_heads[query].argmax()), c_heads.shape[2])
    logits = ablated_logits(run, ablation(run, [AttentionPart(layer, query, source, head)]))

    def subtract(out, ctx):
        out = out.clone()
        out[query] -= ctx.part(query, source, head)
        return out

    _close(logits, hf[family].logits(run.tokens.tolist(), attention={layer: subtract}))
    _changed(logits, run)


@pytest.mark.parametrize("family", FAMILIES)
def test_later_parts_come_from_the_ablated_pass(runs, hf, family):
    """Parts in two layers and several positions: the later layer's vectors are the ones the
    ablated model computes (its values and pattern already changed by the first removal)."""
    run = runs[family]
    T = run.n_tokens
    first = [(i, j, h) for i in range(2, T) for j in (0, 1, i) for h in (0, 3)]
    second = [(T - 1, j, h) for j in range(T) for h in (1, 2)] + [(5, 4, 0)]
    parts = [AttentionPart(0, *p) for p in first] + [AttentionPart(2, *p) for p in second]
    logits = ablated_logits(run, ablation(run, parts))
    expected = hf[family].logits(run.tokens.tolist(), attention={0: subtracting(first), 2: subtracting(second)})
    _close(logits, expected)
    _changed(logits, run)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_a_model_that_keeps_stored_patterns_is_ablated_from_its_own_pass(tiny_folders, hf, family):
    """Where the load-time probe keeps stored attention patterns (``recomputed_rows`` off: GPT-Neo,
    BLOOM, ALiBi), the removed vectors come from the pass's own ``hook_pattern`` and ``hook_v``:
    parts in two layers, grouped query heads (Llama) and post-norm gains (Gemma 2), against the
    same edits in plain transformers."""
    model = llm_flow.load_model(str(tiny_folders[family]))
    model.recomputed_rows = False
    run = model.run(PROMPT)
    T = run.n_tokens
    first = [(i, j, h) for i in range(2, T) for j in (0, i) for h in (0, 3)]
    second = [(T - 1, j, 1) for j in range(T)] + [(5, 4, 2)]
    parts = [AttentionPart(0, *p) for p in first] + [AttentionPart(2, *p) for p in second]
    logits = ablated_logits(run, ablation(run, parts))
    expected = hf[family].logits(run.tokens.tolist(), attention={0: subtracting(first), 2: subtracting(second)})
    _close(logits, expected)
    _changed(logits, run)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ffn_zeroed_or_mean_replaced(runs, hf, family, mode):
    run = runs[family]
    positions = [2, run.n_tokens - 1]
    logits = ablated_logits(run, ablation(run, [FfnPart(1, p) for p in positions], ffn_mode=mode))
    ids = run.tokens.tolist()
    mean = hf[family].ffn_outputs(ids, 1).mean(0)

    def replace(out, ctx):
        out = out.clone()
        out[positions] = 0.0 if mode == "zero" else mean
        return out

    _close(logits, hf[family].logits(ids, ffn={1: replace}))
    _changed(logits, run)


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_parts(runs, hf, family):
    """The residual part of A{l}_i (I{l}_i for parallel blocks) leaves resid_pre[i] out of that
    node; the residual part of I{l}_i (sequential) leaves resid_mid[i] out of resid_post[i]."""
    run = runs[family]
    i = run.n_tokens - 2
    if run.parallel:
        parts, attention, ffn = [ResidualPart(1, i, "I")], {1: _minus("resid_pre", i)}, {}
    else:
        parts = [ResidualPart(1, i, "A"), ResidualPart(2, i, "I")]
        attention, ffn = {1: _minus("resid_pre", i)}, {2: _minus("resid_mid", i)}
    logits = ablated_logits(run, ablation(run, parts))
    _close(logits, hf[family].logits(run.tokens.tolist(), attention=attention, ffn=ffn))
    _changed(logits, run)


def _minus(name: str, position: int):
    def edit(out, ctx):
        out = out.clone()
        out[position] -= ctx.saved[name][position]
        return out

    return edit


def _hf_route_only_logits(run, model: HfModel, graph, ffn_mode: str = "zero") -> torch.Tensor:
    """Route only, in HF: every A/I node of the route rebuilt from the parts its graph edges name
    (read here from the edges directly): kept heads of kept sources, the residual if the self
    edge or residual edge is kept, the FFN if its edge is kept (else zero, or its mean output over
    the prompt in the unmodified pass)."""
    heads = run.model.info.n_heads
    ids = run.tokens.tolist()
    sources: dict[tuple[int, int], set[int]] = {}  # attention node -> kept source positions
    residual_kept, ffn_kept = set(), set()
    for u, v, data in graph.edges(data=True):
        dest = graph.nodes[v]
        key = (dest["layer"], dest["position"])
        if dest["kind"] == "ffn":
            continue
        if data["kind"] == "attention":
            sources.setdefault(key, set()).add(graph.nodes[u]["position"])
        if data["kind"] == "residual" or (data["kind"] == "attention" and graph.nodes[u]["position"] == key[1]):
            residual_kept.add((dest["kind"], *key))
        if data["kind"] == "ffn":
            ffn_kept.add(key)
    attention_kind = "resid_post" if run.parallel else "resid_mid"
    attention_nodes = [(d["layer"], d["position"]) for _, d in graph.nodes(data=True) if d["kind"] == attention_kind]
    i_nodes = [(d["layer"], d["position"]) for _, d in graph.nodes(data=True) if d["kind"] == "resid_post"]

    def attention_edit(layer):
        def edit(out, ctx):
            out = out.clone()
            for lay, i in attention_nodes:
                if lay != layer:
                    continue
                kept = ctx.attention_bias(i) + sum(
                    (ctx.part(i, j, h) for j in sources.get((lay, i), ()) for h in range(heads)),
                    torch.zeros_like(out[i]),
                )
                out[i] = kept - (0 if (attention_kind, lay, i) in residual_kept else ctx.saved["resid_pre"][i])
            return out

        return edit

    def ffn_edit(layer):
        mean = model.ffn_outputs(ids, layer).mean(0) if ffn_mode == "mean" else 0.0

        def edit(out, ctx):
            out = out.clone()
            for lay, i in i_nodes:
                if lay != layer:
                    continue
                if (lay, i) not in ffn_kept:
                    out[i] = mean
                if not run.parallel and ("resid_post", lay, i) not in residual_kept:
                    out[i] -= ctx.saved["resid_mid"][i]
            return out

        return edit

    layers = sorted({lay for lay, _ in attention_nodes} | {lay for lay, _ in i_nodes})
    return model.logits(
        ids, attention={lay: attention_edit(lay) for lay in layers}, ffn={lay: ffn_edit(lay) for lay in layers}
    )


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])
def test_route_only_rebuilds_each_node_from_its_route_edges(runs, hf, family):
    run = runs[family]
    graph = llm_flow.build_graph(run, threshold=0.06)
    logits = ablated_logits(run, dropped_parts(run, route_nodes(run, graph), "zero"))
    _close(logits, _hf_route_only_logits(run, hf[family], graph))
    _changed(logits, run)


def test_route_only_of_a_node_that_keeps_no_attention_edge(runs, hf):
    """A high threshold can leave a node with attention parts on the route but none of its
    attention edges kept (``I0_29`` of GPT-NeoX at 0.1 for token 34, rebuilt from its FFN alone):
    route only removes every head of every source there."""
    run = runs["gpt_neox"]
    graph = llm_flow.build_graph(run, target=34, threshold=0.1)
    nodes = route_nodes(run, graph)
    assert any(n.attention and not n.sources for n in nodes), "the premise: a node keeps no attention edge"
    logits = ablated_logits(run, dropped_parts(run, nodes, "zero"))
    _close(logits, _hf_route_only_logits(run, hf["gpt_neox"], graph))
    _changed(logits, run)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_route_only_of_a_route_whose_first_node_keeps_nothing(runs, hf, family):
    """At threshold 0.5 these routes are one chain whose first node keeps no part: in exact
    arithmetic that node is the attention bias, and the chain above it reads only that (the
    float64 reference's logits are 0 for the bias-free tiny models). Subtracting the removed
    parts from the whole left float32 rounding there, which the next norm scaled to a full-size
    state: logits 4 to 7 off. Rows losing most of their parts are rebuilt from what they keep."""
    run = runs[family]
    graph = llm_flow.build_graph(run, threshold=0.5)
    nodes = route_nodes(run, graph)
    assert any(not (n.sources or n.residual or n.ffn) for n in nodes), "the premise: a node keeps nothing"
    logits = ablated_logits(run, dropped_parts(run, nodes, "zero"))
    expected = _hf_route_only_logits(run, hf[family], graph)
    _close(logits, expected)
    _changed(logits, run)


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """GPT-2 and GPT-NeoX with random biases: `transformers` initialises b_O to zero, and a row
    rebuilt from its kept parts must add it back."""
    root = tmp_path_factory.mktemp("biased")

    def make(family):
        folder = save_tiny_model(family, root / family, random_biases=True)
        return llm_flow.load_model(str(folder)).run(PROMPT), HfModel(str(folder))

    return PerFamily(make)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_route_only_keeps_the_attention_bias_of_every_rebuilt_row(biased, family):
    run, hf_model = biased[family]
    assert run.model.attention_output_bias(0).abs().max() > 0.1, "the premise: a bias to keep"
    graph = llm_flow.build_graph(run, threshold=0.06)
    logits = ablated_logits(run, dropped_parts(run, route_nodes(run, graph), "zero"))
    _close(logits, _hf_route_only_logits(run, hf_model, graph))
    _changed(logits, run)


def test_pairs_are_numbered_row_by_row():
    """Random removals draw a number and turn it into (query, source): row by row, over the causal
    triangle in a decoder and over all T × T pairs in an encoder, exactly at row boundaries even
    for rows of billions of pairs."""
    from llm_flow.interventions.route import _pair

    n = 300
    causal, full = torch.arange(n) + 1, torch.full((n,), n)
    query, source = _pair(causal, torch.arange(n * (n + 1) // 2))
    assert list(zip(query.tolist(), source.tolist())) == [(i, j) for i in range(n) for j in range(i + 1)]
    query, source = _pair(full, torch.arange(n * n))
    assert list(zip(query.tolist(), source.tolist())) == [(i, j) for i in range(n) for j in range(n)]
    counts = torch.tensor([10**9, 3 * 10**9 + 7, 2**31 - 1])
    ends = [10**9, 4 * 10**9 + 7, 4 * 10**9 + 7 + 2**31 - 1]
    query, source = _pair(counts, torch.tensor([ends[0] - 1, ends[0], ends[1] - 1, ends[1], ends[2] - 1]))
    assert query.tolist() == [0, 1, 1, 2, 2]
    assert source.tolist() == [10**9 - 1, 0, 3 * 10**9 + 6, 0, 2**31 - 2]


def test_random_removals_draw_from_every_causal_part_of_the_layer(runs):
    """The random baseline of route removed: as many parts per layer and kind as the route's,
    drawn from all of the layer's (query, source <= query, head) triples and positions."""
    import random

    run = runs["gpt2"]
    heads, n = run.model.info.n_heads, run.n_tokens
    every = {(i, j, h) for i in range(n) for j in range(i + 1) for h in range(heads)}
    chosen = sorted(every)[:: max(1, len(every) // 400)]
    route = ablation(
        run, [AttentionPart(1, *t) for t in chosen] + [ResidualPart(1, 2, "A"), ResidualPart(1, 3, "I"), FfnPart(1, 4)],
        ffn_mode="mean",
    )
    rng, seen, positions = random.Random(0), set(), set()
    for _ in range(200):
        look = random_like(run, route, rng)
        assert look.ffn_mode == "mean" and list(look.layers) == [1]
        layer = look.layers[1]
        triples = {tuple(t) for t in layer.attention.tolist()}
        assert len(triples) == len(chosen) and triples <= every
        assert (len(layer.residual_attention), len(layer.residual_ffn), len(layer.ffn)) == (1, 1, 1)
        seen |= triples
        positions |= layer.residual_attention | layer.residual_ffn | layer.ffn
    assert seen == every, f"{len(every - seen)} parts were never drawn"
    assert positions == set(range(n))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_route_part_sets(runs, family):
    """Route removed and route only split the route's nodes' parts exactly; random look-alikes
    have the same size per layer and kind."""
    run = runs[family]
    graph = llm_flow.build_graph(run, threshold=0.04)
    nodes = route_nodes(run, graph)
    removed, only = kept_parts(run, nodes, "zero"), dropped_parts(run, nodes, "zero")
    assert kept_parts(run, nodes, "zero", residual=False).n_parts == removed.n_parts - sum(n.residual for n in nodes)
    heads = run.model.info.n_heads
    total = sum(
        ((n.position + 1) * heads if n.attention else 0) + 1 + (n.node == "I") for n in nodes
    )  # attention parts + residual + FFN of each node
    assert removed.n_parts + only.n_parts == total
    for layer, r in removed.layers.items():
        o = only.layers[layer]
        kept = {tuple(x) for x in r.attention.tolist()}
        assert not kept & {tuple(x) for x in o.attention.tolist()}
        assert not (r.ffn & o.ffn or r.residual_attention & o.residual_attention or r.residual_ffn & o.residual_ffn)
    import random

    rng = random.Random(1)
    look_alike = random_like(run, removed, rng)
    for layer, r in removed.layers.items():
        a = look_alike.layers[layer]
        assert len(a.attention) == len(r.attention) and len(torch.unique(a.attention, dim=0)) == len(a.attention)
        assert bool((a.attention[:, 1] <= a.attention[:, 0]).all())
        assert (len(a.residual_attention), len(a.residual_ffn), len(a.ffn)) == (
            len(r.residual_attention), len(r.residual_ffn), len(r.ffn))  # fmt: skip
    random_only = dropped_parts(run, nodes, "zero", rng)
    assert random_only.n_parts == only.n_parts


@pytest.mark.parametrize(
    "value, draws, expected",
    [
        (0.5, [0.1, 0.2, 0.3], 100.0),  # every draw below
        (0.05, [0.1, 0.2, 0.3], 0.0),  # every draw above
        (0.2, [0.1, 0.2, 0.3, 0.4], 37.5),  # one below, one tie counted half: 1.5 of 4
        (0.2, [0.2, 0.2], 50.0),  # all ties
        (0.3, [0.3, 0.1, 0.3, 0.9, 0.1], 60.0),  # two below, two ties: 3 of 5, order does not matter
        (1e-9, [0.0], 100.0),
    ],
)
def test_percentile_is_the_share_of_draws_below_with_ties_counted_half(value, draws, expected):
    assert percentile(value, draws) == expected


def _outcome(probability: float) -> Outcome:
    return Outcome(probability=probability, logit=float(probability), rank=1)


def test_the_percentiles_on_screen_compare_each_route_with_its_own_baseline():
    """Route only against random routes, route removed against random removals (and not the
    other way round), as the table and the page's sentence report them."""
    check = RouteCheck(
        position=3, token_id=7, token="x", threshold=0.04, n_route_parts=10, n_dropped_parts=20, seed=0,
        unmodified=_outcome(0.5), route_only=_outcome(0.4), route_removed=_outcome(0.1),
        random_only=(_outcome(0.1), _outcome(0.2), _outcome(0.4), _outcome(0.6)),
        random_removed=(_outcome(0.05), _outcome(0.3), _outcome(0.35), _outcome(0.45), _outcome(0.5)),
    )  # fmt: skip
    assert check.only_percentile == 62.5  # 0.1, 0.2 below, 0.4 a tie: 2.5 of 4
    assert check.removed_percentile == 20.0  # 0.05 below: 1 of 5
    table = check.table()
    assert list(table.columns) == ["condition", "probability", "logit", "rank", "percentile", "low", "high"]
    assert table["rank"].tolist() == [1, 1, 1, 1, 1]
    table = table.set_index("condition")
    assert table.loc["route only", "percentile"] == 62.5 and table.loc["route removed", "percentile"] == 20.0
    medians = table.loc[["random only (median)", "random removed (median)"], ["probability", "logit", "low", "high"]]
    assert medians.values.tolist() == [pytest.approx([0.3, 0.3, 0.1, 0.6]), pytest.approx([0.35, 0.35, 0.05, 0.5])]
    assert table.loc["unmodified", "probability"] == 0.5 and table.loc["route removed", "probability"] == 0.1


def test_the_notebook_summary_reports_the_checks_numbers():
    """What a notebook prints for a route check: each percentage computed by hand from the draws
    (route only beats 3 of 4 random routes; route removed is below 2 of 4 random removals)."""
    check = RouteCheck(
        position=3, token_id=7, token="x", threshold=0.05, n_route_parts=12, n_dropped_parts=34, seed=9,
        unmodified=_outcome(0.5), route_only=_outcome(0.35), route_removed=_outcome(0.15),
        random_only=(_outcome(0.1), _outcome(0.2), _outcome(0.3), _outcome(0.9)),
        random_removed=(_outcome(0.05), _outcome(0.1), _outcome(0.2), _outcome(0.3)),
    )  # fmt: skip
    summary = check.summary()
    assert summary["prediction"] == "'x' at token 3"
    assert summary["route"] == "threshold 0.05: 12 attention and FFN parts (route only removes 34 others)"
    assert summary["random draws"] == "4 of each baseline (seed 9)"
    assert summary["route only beats"] == "75% of random routes of its size"
    assert summary["route removed is below"] == "50% of random removals of its size"
    pd.testing.assert_frame_equal(summary["conditions"], check.table())


def test_every_pass_as_csv_lists_each_condition_and_draw():
    """The "Every pass as CSV" download: one row per pass, in order, with its numbers."""
    check = RouteCheck(
        position=3, token_id=7, token="x", threshold=0.04, n_route_parts=10, n_dropped_parts=20, seed=5,
        unmodified=Outcome(0.5, 2.0, 1), route_only=Outcome(0.4, 1.5, 2), route_removed=Outcome(0.1, -1.0, 9),
        random_only=(Outcome(0.2, 0.5, 3), Outcome(0.3, 0.7, 2)), random_removed=(Outcome(0.45, 1.9, 1),),
    )  # fmt: skip
    table = check.draws_table()
    assert list(table.columns) == ["condition", "draw", "probability", "logit", "rank", "token", "position", "seed"]
    rows = [tuple(None if isinstance(v, type(pd.NA)) else v for v in row) for row in table.itertuples(index=False)]
    assert rows == [
        ("unmodified", None, 0.5, 2.0, 1, "x", 3, 5),
        ("route only", None, 0.4, 1.5, 2, "x", 3, 5),
        ("route removed", None, 0.1, -1.0, 9, "x", 3, 5),
        ("random only", 0, 0.2, 0.5, 3, "x", 3, 5),
        ("random only", 1, 0.3, 0.7, 2, "x", 3, 5),
        ("random removed", 0, 0.45, 1.9, 1, "x", 3, 5),
    ]
    assert str(table["draw"].dtype) == "Int64", "draw numbers stay whole numbers in the CSV"


def test_route_check_is_seeded(runs):
    run = runs["llama"]
    graph = llm_flow.build_graph(run, threshold=0.04)
    first = check_route(run, graph, draws=3, seed=7)
    assert check_route(run, graph, draws=3, seed=7) == first
    other = check_route(run, graph, draws=3, seed=8)
    assert other.random_removed != first.random_removed and other.random_only != first.random_only
    assert first.route_only not in first.random_only, "random routes are not the route"
    mean = check_route(run, graph, draws=3, seed=7, ffn_mode="mean")
    assert mean.random_only != first.random_only and mean.random_removed != first.random_removed
    assert (other.route_only, other.route_removed) == (first.route_only, first.route_removed)
    assert first.unmodified.rank == 1 and first.token_id == int(run.logits[-1].argmax())
    assert len(first.random_only) == 3 and 0 <= first.only_percentile <= 100
    table = first.table()
    assert list(table["condition"]) == [
        "unmodified", "route only", "random only (median)", "route removed", "random removed (median)"]  # fmt: skip


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_route_check_against_transformers(runs, hf, family):
    """The two numbers a check is about, for a token the model does not rank first and with FFNs
    mean-replaced: route only against HF route only; route removed against HF with every
    attention part of the route's attention edges and every FFN on the route taken out (the
    residual stream stays: see llm_flow/interventions/route_checks.py)."""
    run, model = runs[family], hf[family]
    graph = llm_flow.build_graph(run, threshold=0.04)
    position, ids = graph.graph["target"], run.tokens.tolist()
    token = int(torch.argsort(run.logits[position], descending=True)[1])
    check = check_route(run, graph, draws=1, seed=3, token=token, ffn_mode="mean")
    only = _hf_route_only_logits(run, model, graph, ffn_mode="mean")[position]
    sources: dict[tuple[int, int], set[int]] = {}
    ffn_cut: dict[int, set[int]] = {}
    for u, v, data in graph.edges(data=True):
        dest = graph.nodes[v]
        if data["kind"] == "attention":
            sources.setdefault((dest["layer"], dest["position"]), set()).add(graph.nodes[u]["position"])
        elif data["kind"] == "ffn" and dest["kind"] == "resid_post":
            ffn_cut.setdefault(dest["layer"], set()).add(dest["position"])
    heads = run.model.info.n_heads

    def attention(layer):
        def edit(out, ctx):
            out = out.clone()
            for (lay, i), kept in sources.items():
                if lay == layer:
                    out[i] -= sum(ctx.part(i, j, h) for j in kept for h in range(heads))
            return out

        return edit

    def ffn(layer):
        mean = model.ffn_outputs(ids, layer).mean(0)

        def edit(out, ctx):
            out = out.clone()
            out[sorted(ffn_cut[layer])] = mean
            return out

        return edit

    removed = model.logits(ids, attention={lay: attention(lay) for lay, _ in sources}, ffn={lay: ffn(lay) for lay in ffn_cut})
    removed = removed[position]
    for got, logits in ((check.route_only, only), (check.route_removed, removed)):
        assert got.probability == pytest.approx(float(torch.softmax(logits, -1)[token]), rel=1e-3)
        assert got.logit == pytest.approx(float(logits[token]), abs=ATOL)
        assert got.rank == int((logits > logits[token]).sum()) + 1
    assert check.token_id == token and check.token == run.model.decode_tokens([token])[0]
    assert (check.position, check.threshold, check.seed) == (position, 0.04, 3)
    n_kept_attention = heads * sum(map(len, sources.values()))
    assert check.n_route_parts == n_kept_attention + sum(map(len, ffn_cut.values()))
    # route only drops, at every A/I node of the route, each part its edges do not keep
    nodes = [d for _, d in graph.nodes(data=True) if d["kind"] in ("resid_mid", "resid_post")]
    with_attention = "resid_post" if run.parallel else "resid_mid"
    every = sum((d["position"] + 1) * heads * (d["kind"] == with_attention) + 1 + (d["kind"] == "resid_post") for d in nodes)
    residual_kept = {v for u, v, d in graph.edges(data=True) if d["kind"] == "residual"
                     or (d["kind"] == "attention" and graph.nodes[u]["position"] == graph.nodes[v]["position"])}  # fmt: skip
    kept = n_kept_attention + len(residual_kept) + sum(map(len, ffn_cut.values()))
    assert check.n_dropped_parts == every - kept
    assert abs(check.route_removed.logit - check.unmodified.logit) > 100 * ATOL
    assert len(check.random_only) == len(check.random_removed) == 1


def test_route_check_defaults(runs):
    """20 draws of each kind and seed 0 unless asked otherwise (what the CLI and app document)."""
    run = runs["gpt_neox"]
    graph = llm_flow.build_graph(run, threshold=0.1)
    check = check_route(run, graph)
    assert len(check.random_only) == len(check.random_removed) == 20 and check.seed == 0
    assert check == check_route(run, graph, draws=20, seed=0)


def _hf_edge_removal(run, graph, source: str, dest: str):
    """The edits that remove one route edge's parts, written from DESIGN.md §1 and the edge's own
    attributes: an attention edge j -> A{l}_i (I{l}_i for parallel blocks) is z[i, j, h] for
    every head, plus the residual stream when j == i; A -> I is the residual part resid_mid[i]
    of I{l}_i; an FFN edge (M -> I, or the edge into M carrying the same flow) is mlp_out[i]."""
    start, end = graph.nodes[source], graph.nodes[dest]
    kind = graph.edges[source, dest]["kind"]
    layer, i = end["layer"], end["position"]
    if kind == "attention":
        j = start["position"]

        def attention(out, ctx):
            out = out.clone()
            out[i] -= sum(ctx.part(i, j, h) for h in range(run.model.info.n_heads))
            if j == i:
                out[i] -= ctx.saved["resid_pre"][i]
            return out

        return {layer: attention}, {}
    if kind == "residual":
        return {}, {layer: _minus("resid_mid", i)}

    def no_ffn(out, ctx):
        out = out.clone()
        out[i] = 0.0
        return out

    return {}, {layer: no_ffn}


def _edges_of_each_kind(graph) -> list[tuple[str, str]]:
    """The heaviest edge of each kind: attention from another token, attention from the token
    itself (with the residual), residual, FFN out of M and FFN into M. Not into token 0: there
    the self edge is every part of its node, and the zero state left behind is normalised by the
    next norm, which turns float32 rounding into anything (seen: 11 logits on tiny GPT-2)."""

    def heaviest(keep):
        edges = [(d["weight"], u, v) for u, v, d in graph.edges(data=True) if keep(u, v, d) and position(v) > 0]
        return max(edges)[1:] if edges else None

    position = lambda node: graph.nodes[node]["position"]  # noqa: E731
    kinds = [
        lambda u, v, d: d["kind"] == "attention" and position(u) != position(v),
        lambda u, v, d: d["kind"] == "attention" and position(u) == position(v),
        lambda u, v, d: d["kind"] == "residual",
        lambda u, v, d: d["kind"] == "ffn" and v.startswith("I"),
        lambda u, v, d: d["kind"] == "ffn" and v.startswith("M"),
    ]
    return [edge for edge in map(heaviest, kinds) if edge is not None]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_edge_removal_equals_removing_its_parts_in_transformers(runs, hf, family):
    """What "Remove this edge" reports (probability, logit and rank of the predicted token before
    and after, the parts removed) against the same removal done with hooks on plain transformers
    in float64."""
    run = runs[family]
    graph = llm_flow.build_graph(run, threshold=0.04)
    ids, target = run.tokens.tolist(), graph.graph["target"]
    plain = hf[family].logits(ids)[target]
    token = int(plain.argmax())
    edges = _edges_of_each_kind(graph)
    assert len(edges) == (4 if run.parallel else 5), edges  # parallel blocks have no residual edge
    heads = run.model.info.n_heads
    for source, dest in edges:
        result = check_edge(run, graph, source, dest)
        attention, ffn = _hf_edge_removal(run, graph, source, dest)
        removed = hf[family].logits(ids, attention=attention, ffn=ffn)[target]
        assert (result.source, result.dest, result.token_id) == (source, dest, token)
        assert result.token == run.model.decode_tokens([token])[0]
        self_edge = graph.nodes[source]["position"] == graph.nodes[dest]["position"]
        kind = graph.edges[source, dest]["kind"]
        assert result.n_parts == (heads + self_edge if kind == "attention" else 1), (source, dest)
        for got, logits in ((result.unmodified, plain), (result.removed, removed)):
            probability = float(torch.softmax(logits, -1)[token])
            assert got.probability == pytest.approx(probability, rel=1e-3), (source, dest)
            assert got.logit == pytest.approx(float(logits[token]), abs=ATOL), (source, dest)
            assert got.rank == int((logits > logits[token]).sum()) + 1, (source, dest)
        assert abs(result.removed.logit - result.unmodified.logit) > 100 * ATOL, f"{source}->{dest} changed nothing"


def test_edge_removal_of_an_ffn_edge_with_mean_replacement_and_another_token(runs, hf):
    run, model = runs["llama"], hf["llama"]
    graph = llm_flow.build_graph(run, threshold=0.04)
    source, dest = next((u, v) for u, v in _edges_of_each_kind(graph) if v.startswith("I") and u.startswith("M"))
    target, ids = graph.graph["target"], run.tokens.tolist()
    token = int(torch.argsort(run.logits[target], descending=True)[3])
    result = check_edge(run, graph, source, dest, token=token, ffn_mode="mean")
    layer, i = graph.nodes[dest]["layer"], graph.nodes[dest]["position"]
    mean = model.ffn_outputs(ids, layer).mean(0)

    def replace(out, ctx):
        out = out.clone()
        out[i] = mean
        return out

    logits = model.logits(ids, ffn={layer: replace})[target]
    assert result.token_id == token and result.removed.rank == int((logits > logits[token]).sum()) + 1
    assert result.removed.logit == pytest.approx(float(logits[token]), abs=ATOL)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_threshold_curve_is_route_only_at_each_threshold(runs, hf, family):
    """Each row of the curve: the route at that threshold (target and renormalisation from the
    graph), its size, and the chosen token's fate with that route alone, against HF route only."""
    run = runs[family]
    graph = llm_flow.build_graph(run, threshold=0.04, renormalize=False)
    position = graph.graph["target"]
    token = int(torch.argsort(run.logits[position], descending=True)[2])  # not the top prediction
    curve = threshold_curve(run, graph, thresholds=(0.2, 0.02, 0.05), token=token, ffn_mode="mean")
    assert list(curve.columns) == ["threshold", "nodes", "edges", "parts", "probability", "logit", "rank"]
    assert list(curve["threshold"]) == [0.02, 0.05, 0.2]
    heads = run.model.info.n_heads
    for row in curve.itertuples():
        route = llm_flow.build_graph(run, position, row.threshold, renormalize=False)
        assert (row.nodes, row.edges) == (route.number_of_nodes(), route.number_of_edges())
        kinds = [(d["kind"], v[0]) for _, v, d in route.edges(data=True)]
        assert row.parts == heads * kinds.count(("attention", "I" if run.parallel else "A")) + kinds.count(("ffn", "I"))
        logits = _hf_route_only_logits(run, hf[family], route, ffn_mode="mean")[position]
        assert row.probability == pytest.approx(float(torch.softmax(logits, -1)[token]), rel=1e-3)
        assert row.logit == pytest.approx(float(logits[token]), abs=ATOL)
        assert row.rank == int((logits > logits[token]).sum()) + 1
    assert curve["parts"].iloc[0] > curve["parts"].iloc[-1]


def test_progress_counts_every_forward_pass_once(runs):
    """The progress bar of a check: route only, route removed and two passes per draw, numbered
    1..total; the threshold curve's: one pass per threshold."""
    run = runs["gpt2"]
    graph = llm_flow.build_graph(run, threshold=0.1)
    calls = []
    check_route(run, graph, draws=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]
    calls.clear()
    threshold_curve(run, graph, thresholds=(0.1, 0.05, 0.2), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_any_token_id_of_the_vocabulary_can_be_followed(runs):
    """Token ids 0 and vocab - 1 are accepted (their fates differ), vocab is refused with the range."""
    run = runs["gpt2"]
    graph = llm_flow.build_graph(run, threshold=0.2)
    vocab = run.model.hf_model.config.vocab_size
    assert vocab > run.n_tokens, "a vocabulary larger than the prompt"
    first, last = (threshold_curve(run, graph, thresholds=(0.2,), token=t) for t in (0, vocab - 1))
    assert first["logit"].iloc[0] != last["logit"].iloc[0]
    with pytest.raises(llm_flow.ArgumentError, match=rf"token must be a token id 0\.\.{vocab - 1} \(got {vocab}\)"):
        threshold_curve(run, graph, thresholds=(0.2,), token=vocab)


def test_the_threshold_curve_follows_the_models_top_token_at_the_routes_target(runs, hf):
    """Without `token`, the curve reports the token plain transformers ranks first at the
    graph's target (not at the last position): its route-only fate against HF route only."""
    run, model = runs["llama"], hf["llama"]
    position = 5
    logits = model.logits(run.tokens.tolist())
    top = int(logits[position].argmax())
    assert top != int(logits[-1].argmax()), "another position would name another token"
    assert logits[position, top] - torch.topk(logits[position], 2).values[1] > 1e-3, "no near tie"
    curve = threshold_curve(run, llm_flow.build_graph(run, position, 0.04), thresholds=(0.1,))
    only = _hf_route_only_logits(run, model, llm_flow.build_graph(run, position, 0.1))[position]
    assert curve["probability"].iloc[0] == pytest.approx(float(torch.softmax(only, -1)[top]), rel=1e-3)
    assert curve["rank"].iloc[0] == int((only > only[top]).sum()) + 1


@pytest.mark.parametrize(
    "parts, message",
    [
        ([AttentionPart(3, 1, 0, 0)], "layer must be 0..2"),
        ([AttentionPart(0, 99, 0, 0)], r"AttentionPart\(layer=0, query=99, source=0, head=0\): token positions must be"),
        ([FfnPart(0, 36)], r"FfnPart\(layer=0, position=36\): token positions must be 0\.\.35 for this 36-token prompt"),
        ([AttentionPart(0, 4, 36, 0)], r"AttentionPart\(layer=0, query=4, source=36, head=0\): token positions"),
        ([AttentionPart(3, 4, 3, 0)], r"AttentionPart\(layer=3, query=4, source=3, head=0\): layer must be"),
        ([AttentionPart(0, 1, 2, 0)], "comes after query"),
        ([AttentionPart(0, 2, 1, 4)], "head must be 0..3"),
        ([ResidualPart(0, 1, "M")], "node must be 'A'"),
        ([ResidualPart(5, 1, "A")], r"ResidualPart\(layer=5, position=1, node='A'\): layer must be"),
        ([ResidualPart(0, 99, "I")], r"ResidualPart\(layer=0, position=99, node='I'\): token positions must be"),
        ([FfnPart(-1, 0)], r"FfnPart\(layer=-1, position=0\): layer must be 0\.\.2 \(got -1\)"),
        (
            [(0, 1, 0, 0)],
            r"^\(0, 1, 0, 0\) is not a part: use AttentionPart\(layer, query, source, head\), "
            r"ResidualPart\(layer, position, 'A' or 'I'\) or FfnPart\(layer, position\)$",
        ),
    ],
)
def test_bad_parts(runs, parts, message):
    with pytest.raises(llm_flow.ArgumentError, match=message):
        ablation(runs["llama"], parts)


def test_bad_arguments(runs):
    run, other = runs["llama"], runs["gpt2"]
    graph = llm_flow.build_graph(run, threshold=0.04)
    with pytest.raises(llm_flow.ArgumentError, match="no A node"):
        ablation(runs["gpt_neox"], [ResidualPart(0, 1, "A")])
    with pytest.raises(llm_flow.ArgumentError, match="ffn_mode"):
        ablation(run, [], ffn_mode="half")
    with pytest.raises(llm_flow.ArgumentError, match="draws"):
        check_route(run, graph, draws=0)
    import networkx as nx

    elsewhere = llm_flow.build_graph(run.model.run("The capital of France is"), threshold=0.04)  # same model
    untokenised = nx.DiGraph(target=-1, n_layers=run.n_layers, model=run.model.name)
    for foreign in (graph, elsewhere, untokenised):
        with pytest.raises(llm_flow.ArgumentError) as error:
            check_route(other if foreign is graph else run, foreign)
        assert str(error.value) == (
            "this route graph was built for another prompt or model: build it from the same run (llm_flow.build_graph(run, ...))"
        )
    for foreign in (nx.DiGraph(), nx.DiGraph(n_layers=run.n_layers)):
        with pytest.raises(llm_flow.ArgumentError) as error:
            check_route(run, foreign)
        assert str(error.value) == "this is not a route graph: build one with llm_flow.build_graph(run, ...)"
    with pytest.raises(llm_flow.ArgumentError, match="token id"):
        check_route(run, graph, token=10**6)
    with pytest.raises(llm_flow.ArgumentError, match="no edge"):
        check_edge(run, graph, "X_0", "X_1")
    with pytest.raises(llm_flow.ArgumentError, match="threshold"):
        threshold_curve(run, graph, thresholds=(0.5, 2.0))
    short = run.model.run("The capital")
    with pytest.raises(llm_flow.ArgumentError, match="token prompt"):
        ablated_logits(short, ablation(run, []))


def test_an_encoder_decoder_is_refused_by_name(tmp_path, runs):
    """An encoder–decoder's run (a source and a target) has no TransformerLens hooks in llm-flow:
    every intervention refuses it with llm-flow's error naming the model and what it has instead,
    and something that is not a run at all is refused as such."""
    model = llm_flow.load_model(str(save_tiny_model("t5", tmp_path / "t5")))
    pair = model.run_pair("The capital of France is Paris.", "Paris is the capital")
    graph = llm_flow.seq2seq_route(pair, -1)
    decoder = runs["gpt2"]
    calls = {
        "ablation": lambda run: ablation(run, [FfnPart(0, 0)]),
        "ablated_logits": lambda run: ablated_logits(run, ablation(decoder, [])),
        "check_route": lambda run: check_route(run, graph, draws=1),
        "check_edge": lambda run: check_edge(run, graph, *next(iter(graph.edges))),
        "threshold_curve": lambda run: threshold_curve(run, graph),
    }
    for name, call in calls.items():
        with pytest.raises(llm_flow.UnsupportedModelError) as error:
            call(pair)
        assert str(error.value) == (
            f"{model.name}: T5ForConditionalGeneration is an encoder–decoder: interventions and route checks re-run "
            "one prompt through TransformerLens hooks, which llm-flow has for decoder-only and encoder models only "
            "so far; its routes across the two stacks are llm_flow.seq2seq_route(run, position)"
        ), name
        with pytest.raises(llm_flow.ArgumentError, match=r"^interventions take a Run \(model.run\(prompt\)\), not str$"):
            call("The capital of France is")


@pytest.mark.real_model
def test_smollm2_route_beats_random_parts_of_its_size(smollm2):
    """On the real model the route's own parts carry far more of " Paris" than random ones."""
    run = smollm2.run("The capital of France is")
    assert (ablated_logits(run, ablation(run, [])) - run.logits).abs().max().item() <= 5e-5  # SDPA vs eager rounding
    check = check_route(run, llm_flow.build_graph(run, threshold=0.04), draws=3, seed=0)
    assert check.token == " Paris" and check.unmodified.rank == 1
    assert check.route_only.probability > 10 * max(o.probability for o in check.random_only)

"""Thresholding, renormalisation and top-down pruning on contribution data whose answer is known."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

import llm_flow
from llm_flow.routes.contributions import RowContributions
from llm_flow.routes.graph import apply_threshold, route_graph


class TableSource:
    """Hand-built contributions, and a record of which attention rows the pruner asked for."""

    def __init__(self, heads, residual, ffn, ffn_residual, parallel=False):
        self.heads, self.residual, self.ffn_share, self.ffn_residual = heads, residual, ffn, ffn_residual
        self.n_layers = len(heads)
        self.parallel = parallel
        self.str_tokens = [f"t{i}" for i in range(heads[0].shape[0])]
        self.requested: set[tuple[int, int]] = set()

    def attention_rows(self, layer, positions):
        self.requested.update((layer, p) for p in positions)
        return [
            RowContributions(
                p,
                self.heads[layer][p, : p + 1],
                float(self.residual[layer][p]),
                float(self.ffn_share[layer][p]) if self.parallel else None,
            )
            for p in positions
        ]

    def ffn(self, layer, positions):
        return self.ffn_share[layer][positions], self.ffn_residual[layer][positions]


def hand_built() -> TableSource:
    """2 layers, 3 tokens, 2 heads; see the expected graph in the tests below."""
    heads = [torch.zeros(3, 3, 2), torch.zeros(3, 3, 2)]
    residual = [torch.zeros(3), torch.zeros(3)]
    # layer 1, row 2: sources j0 = 0.07, j1 = 0.30, j2 = 0.03 + residual 0.60
    heads[1][2] = torch.tensor([[0.05, 0.02], [0.30, 0.0], [0.02, 0.01]])
    residual[1][2] = 0.60
    # layer 0, row 1: j0 = 0.7, j1 = 0.1 + residual 0.2; row 2: j2 = 0.03 + residual 0.97
    heads[0][1, :2] = torch.tensor([[0.5, 0.2], [0.05, 0.05]])
    residual[0][1] = 0.2
    heads[0][2] = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.01, 0.02]])
    residual[0][2] = 0.97
    # rows nobody should ask for: layer 1 rows 0 and 1
    heads[1][0, 0] = torch.tensor([0.5, 0.5])
    heads[1][1, :2] = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    ffn = [torch.tensor([0.1, 0.05, 0.9]), torch.tensor([0.5, 0.5, 0.3])]
    ffn_residual = [torch.tensor([0.9, 0.95, 0.1]), torch.tensor([0.5, 0.5, 0.7])]
    return TableSource(heads, residual, ffn, ffn_residual)


def edges(graph):
    return {(u, v): round(d["weight"], 6) for u, v, d in graph.edges(data=True)}


def test_hand_built_route_without_renormalisation():
    source = hand_built()
    graph = route_graph(source, target=2, threshold=0.1, renormalize=False)
    assert edges(graph) == {
        ("A1_2", "I1_2"): 0.7,
        ("M1_2", "I1_2"): 0.3,
        ("A1_2", "M1_2"): 0.3,
        ("I0_1", "A1_2"): 0.3,
        ("I0_2", "A1_2"): 0.63,  # self-attention 0.03 and residual 0.60 share the edge
        ("A0_1", "I0_1"): 0.95,
        ("M0_2", "I0_2"): 0.9,  # the residual share 0.1 is not > 0.1: dropped
        ("A0_2", "M0_2"): 0.9,
        ("X_0", "A0_1"): 0.7,
        ("X_1", "A0_1"): 0.3,
        ("X_2", "A0_2"): 1.0,
    }
    assert graph.edges["I0_2", "A1_2"]["residual"] == pytest.approx(0.6)
    assert graph.edges["I0_2", "A1_2"]["heads"] == pytest.approx([0.02, 0.01])
    assert graph.edges["I0_1", "A1_2"]["heads"] == pytest.approx([0.3, 0.0])
    # The pruner never looked at rows the target cannot reach.
    assert source.requested == {(1, 2), (0, 1), (0, 2)}
    assert graph.nodes["X_1"] == {"kind": "embedding", "layer": -1, "position": 1, "token": "t1"}
    assert graph.nodes["M1_2"]["kind"] == "ffn" and graph.nodes["A0_1"]["kind"] == "resid_mid"


def test_hand_built_route_with_renormalisation():
    graph = route_graph(hand_built(), target=2, threshold=0.1, renormalize=True)
    e = edges(graph)
    assert e[("I0_1", "A1_2")] == round(0.3 / 0.93, 6)
    assert e[("I0_2", "A1_2")] == round(0.63 / 0.93, 6)
    assert graph.edges["I0_2", "A1_2"]["heads"] == pytest.approx([0.02 / 0.93, 0.01 / 0.93])
    assert graph.edges["I0_2", "A1_2"]["residual"] == pytest.approx(0.6 / 0.93)
    assert e[("M0_2", "I0_2")] == 1.0 and e[("A0_2", "M0_2")] == 1.0
    assert e[("A0_1", "I0_1")] == 1.0  # 0.95 alone survives
    assert set(e) == set(edges(route_graph(hand_built(), 2, 0.1, False)))


def test_the_highest_threshold_keeps_at_most_one_part_per_node():
    """Contributions of one representation sum to 1, so at 0.5 (the highest threshold offered)
    at most one part of a node passes, and renormalised it carries everything."""
    graph = route_graph(hand_built(), target=2, threshold=0.5, renormalize=True)
    for node in graph.nodes:
        incoming = list(graph.in_edges(node, data=True))
        assert len(incoming) <= 1
        assert all(data["weight"] == pytest.approx(1.0) for *_, data in incoming)


def test_a_route_that_stops_before_the_first_layer_is_still_a_graph():
    """When no part of the target's node passes the threshold the walk stops there: the graph
    holds the target node alone (not nothing, not None), and the layers below are never read."""
    source = hand_built()
    source.ffn_share[1][2], source.ffn_residual[1][2] = 0.45, 0.45
    graph = route_graph(source, target=2, threshold=0.5, renormalize=True)
    assert isinstance(graph, nx.DiGraph) and graph.graph["target"] == 2
    assert list(graph.nodes) == ["I1_2"] and graph.number_of_edges() == 0
    assert source.requested == set()


def test_apply_threshold_rescales_survivors():
    weights = torch.tensor([0.5, 0.3, 0.04, 0.16])
    kept = apply_threshold(weights, 0.1, renormalize=True)
    torch.testing.assert_close(kept, torch.tensor([0.5, 0.3, 0.0, 0.16]) / 0.96)
    torch.testing.assert_close(apply_threshold(weights, 0.1, False), torch.tensor([0.5, 0.3, 0.0, 0.16]))
    assert apply_threshold(weights, 0.6, True).sum() == 0  # nothing survives, nothing divides by zero


def random_source(seed: int, parallel: bool, n_layers=4, n_tokens=7, n_heads=3) -> TableSource:
    """Peaked random distributions: each representation's parts sum to 1."""
    gen = torch.Generator().manual_seed(seed)
    heads, residual, ffn, ffn_residual = [], [], [], []
    for _ in range(n_layers):
        h = torch.zeros(n_tokens, n_tokens, n_heads)
        r, f = torch.zeros(n_tokens), torch.zeros(n_tokens)
        for i in range(n_tokens):
            n_parts = (i + 1) * n_heads + 1 + int(parallel)
            dist = torch.distributions.Dirichlet(torch.full((n_parts,), 0.3)).sample()
            dist = torch.where(torch.rand(n_parts, generator=gen) < 0.5, dist, dist * 0.3)
            dist = dist / dist.sum()
            h[i, : i + 1] = dist[: (i + 1) * n_heads].reshape(i + 1, n_heads)
            r[i] = dist[(i + 1) * n_heads]
            if parallel:
                f[i] = dist[-1]
        if not parallel:
            f = torch.rand(n_tokens, generator=gen)
        heads.append(h)
        residual.append(r)
        ffn.append(f)
        ffn_residual.append(r if parallel else 1 - f)
    return TableSource(heads, residual, ffn, ffn_residual, parallel)


def brute_force(source: TableSource, target: int, threshold: float, renormalize: bool) -> dict:
    """Every thresholded edge of every node, then a plain reverse BFS from the target."""
    all_edges: dict[str, dict[str, float]] = {}  # destination -> {origin: weight}
    n_tokens = len(source.str_tokens)

    def add(dest, weights: dict[str, float]):
        names = list(weights)
        kept = apply_threshold(torch.tensor([weights[n] for n in names], dtype=torch.float64), threshold, renormalize)
        all_edges.setdefault(dest, {}).update({n: float(w) for n, w in zip(names, kept) if w > threshold})

    for layer in range(source.n_layers):
        inp = (lambda j: f"X_{j}") if layer == 0 else (lambda j, l=layer: f"I{l - 1}_{j}")
        for i in range(n_tokens):
            parts = {inp(j): float(source.heads[layer][i, j].sum()) for j in range(i + 1)}
            parts[inp(i)] += float(source.residual[layer][i])
            if source.parallel:
                parts[f"M{layer}_{i}"] = float(source.ffn_share[layer][i])
                add(f"I{layer}_{i}", parts)
                if f"M{layer}_{i}" in all_edges[f"I{layer}_{i}"]:
                    all_edges[f"M{layer}_{i}"] = {inp(i): all_edges[f"I{layer}_{i}"][f"M{layer}_{i}"]}
            else:
                add(f"A{layer}_{i}", parts)
                add(f"I{layer}_{i}", {f"A{layer}_{i}": float(source.ffn_residual[layer][i]),
                                      f"M{layer}_{i}": float(source.ffn_share[layer][i])})
                if f"M{layer}_{i}" in all_edges[f"I{layer}_{i}"]:
                    all_edges[f"M{layer}_{i}"] = {f"A{layer}_{i}": all_edges[f"I{layer}_{i}"][f"M{layer}_{i}"]}
    kept, stack, seen = {}, [f"I{source.n_layers - 1}_{target}"], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for origin, weight in all_edges.get(node, {}).items():
            kept[(origin, node)] = weight
            stack.append(origin)
    return kept


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold,renormalize", [(0.02, True), (0.05, False), (0.1, True)])
def test_pruned_graph_equals_brute_force(seed, parallel, threshold, renormalize):
    source = random_source(seed, parallel)
    target = seed % len(source.str_tokens)
    graph = route_graph(source, target, threshold, renormalize)
    got = {(u, v): d["weight"] for u, v, d in graph.edges(data=True)}
    expected = brute_force(source, target, threshold, renormalize)
    assert set(got) == set(expected)
    assert got == pytest.approx(expected, abs=1e-5)
    target_node = f"I{source.n_layers - 1}_{target}"
    for u, v, d in graph.edges(data=True):
        assert d["weight"] > threshold
        assert nx.has_path(graph, v, target_node)
        if d["kind"] == "attention":
            assert sum(d["heads"]) + d["residual"] == pytest.approx(d["weight"], abs=1e-6)


@pytest.mark.parametrize("bad", [-0.01, 0.0, 0.0009, 0.51, 1.0, math.nan, "0.1"])
def test_threshold_outside_the_offered_range_is_refused(tiny_models, bad):
    run = tiny_models("gpt2").run("The capital of France is")
    with pytest.raises(llm_flow.ArgumentError, match="threshold must be a number from 0.001 to 0.5"):
        llm_flow.build_graph(run, threshold=bad)


@pytest.mark.parametrize("target", [99, -99])
def test_target_out_of_range_is_refused(tiny_models, target):
    run = tiny_models("gpt2").run("The capital of France is")
    with pytest.raises(llm_flow.ArgumentError, match=f"target position {target} is out of range: the prompt has"):
        llm_flow.build_graph(run, target=target)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_real_run_graph_is_a_route_to_the_target(tiny_models, family):
    run = tiny_models(family).run("When Mary and John went to the store, John gave a drink to")
    graph = llm_flow.build_graph(run, target=-1, threshold=0.03)
    target_node = f"I{run.n_layers - 1}_{run.n_tokens - 1}"
    assert graph.graph["target"] == run.n_tokens - 1
    assert any(d["kind"] == "embedding" for _, d in graph.nodes(data=True))
    for node, data in graph.nodes(data=True):
        assert nx.has_path(graph, node, target_node)
        assert data["token"] == run.str_tokens[data["position"]]
    if run.parallel:
        assert not any(d["kind"] == "resid_mid" for _, d in graph.nodes(data=True))


def _reference_source(folder: str, run) -> TableSource:
    """The run's contributions from the float64 reference of tests/reference.py."""
    from tests.reference import reference_contributions, reference_layers

    tables = [reference_contributions(layer, run.parallel) for layer in reference_layers(folder, run.tokens.tolist())]
    return TableSource(*([t[k] for t in tables] for k in range(4)), parallel=run.parallel)


def _margin(source: TableSource, threshold: float) -> float:
    """How close any edge weight of any node comes to the threshold (before renormalisation)."""
    weights = []
    for layer in range(source.n_layers):
        edge = source.heads[layer].sum(-1)  # [T, T] per source
        edge = edge + torch.diag(source.residual[layer])
        weights += [edge[edge > 0], source.ffn_share[layer], source.ffn_residual[layer]]
    return float((torch.cat(weights) - threshold).abs().min())


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_a_real_runs_route_is_the_route_of_the_reference_contributions(tiny_models, tiny_folders, family, renormalize):
    """End to end: `build_graph` on a run (its settings, graph attributes, edges and weights)
    against the brute-force route of contributions computed by the independent float64
    reference, at a threshold no weight comes within the tolerance of the contribution tests
    (1e-4) of: there float32 rounding cannot decide whether an edge is kept."""
    run = tiny_models(family).run("When Mary and John went to the store, John gave a drink to")
    source = _reference_source(str(tiny_folders[family]), run)
    threshold = max((round(0.03 + 0.0005 * k, 4) for k in range(100)), key=lambda t: _margin(source, t))
    assert _margin(source, threshold) > 1e-4
    target = run.n_tokens - 2
    graph = llm_flow.build_graph(run, target - run.n_tokens, threshold, renormalize)
    assert graph.graph == {
        "tokens": run.str_tokens, "target": target, "threshold": threshold, "renormalize": renormalize,
        "n_layers": run.n_layers, "n_tokens": run.n_tokens, "parallel": run.parallel,
        "model": run.model.name, "prompt": run.prompt,
    }  # fmt: skip
    expected = brute_force(source, target, threshold, renormalize)
    got = {(u, v): d["weight"] for u, v, d in graph.edges(data=True)}
    assert set(got) == set(expected) and len(got) > 10
    assert got == pytest.approx(expected, abs=1e-4)


def test_build_graph_defaults(tiny_models):
    """As documented: the last token, threshold 0.04, renormalised."""
    run = tiny_models("gpt2").run("The capital of France is")
    attrs = llm_flow.build_graph(run).graph
    assert (attrs["target"], attrs["threshold"], attrs["renormalize"]) == (run.n_tokens - 1, 0.04, True)


@pytest.mark.parametrize("renormalize", [False, True])
def test_a_weight_equal_to_the_threshold_is_dropped(renormalize):
    """"<= t is dropped" (DESIGN.md §1), at every kind of edge: the residual and FFN shares of an
    I node and an attention edge, each exactly at the threshold."""
    heads, residual = [torch.zeros(2, 2, 1)], [torch.tensor([1.0, 0.25])]
    heads[0][1] = torch.tensor([[0.25], [0.5]])  # row 1: source 0 at exactly 0.25; source 1 0.5 + residual 0.25
    ffn, ffn_residual = [torch.tensor([0.25, 0.25])], [torch.tensor([0.75, 0.75])]
    graph = route_graph(TableSource(heads, residual, ffn, ffn_residual), 1, 0.25, renormalize)
    assert set(graph.edges) == {("A0_1", "I0_1"), ("X_1", "A0_1")}, "the FFN (0.25) and source 0 (0.25) are dropped"
    heads = [torch.zeros(2, 2, 1)]
    heads[0][1] = torch.tensor([[0.5], [0.25]])
    source = TableSource(heads, [torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 0.75])], [torch.tensor([0.0, 0.25])])
    graph = route_graph(source, 1, 0.25, renormalize)
    # the residual share of I0_1 (0.25) and source 1 of A0_1 (0.25) are dropped
    assert set(graph.edges) == {("M0_1", "I0_1"), ("A0_1", "M0_1"), ("X_0", "A0_1")}


def test_a_shared_route_is_built_once_per_run_and_settings(tiny_models):
    """Pages take the route from the Run (every session, every rerun): the same settings give the
    same graph object, and each settings' graph equals a fresh `build_graph` with them."""
    from llm_flow.routes.graph import shared_graph

    run = tiny_models("llama").run("The capital of France is Paris, and Rome is")
    graph = shared_graph(run, -1, 0.05, False)
    assert shared_graph(run, run.n_tokens - 1, 0.05, False) is graph
    for settings in ((-1, 0.05, False), (-2, 0.05, False), (-1, 0.02, False), (-1, 0.05, True)):
        shared, fresh = shared_graph(run, *settings), llm_flow.build_graph(run, *settings)
        assert shared.graph == fresh.graph and sorted(shared.edges(data=True)) == sorted(fresh.edges(data=True))
    assert len({id(shared_graph(run, *s)) for s in ((-1, 0.05, False), (-2, 0.05, False), (-1, 0.05, True))}) == 3
    assert shared_graph(run).graph == llm_flow.build_graph(run).graph, "the same defaults as build_graph"


def test_a_notebook_route_is_build_graphs_route_and_its_summary_says_so(tiny_models, tiny_folders):
    """`llm_flow.route` takes `build_graph`'s arguments and defaults; its printed summary gives
    the prediction's probability (against plain transformers), the settings and the size."""
    import transformers

    run = tiny_models("gpt2").run("The capital of France is")
    route = llm_flow.route(run, 2, 0.05, False)
    expected = llm_flow.build_graph(run, 2, 0.05, False)
    assert route.target == 2 and route.graph.graph == expected.graph
    assert sorted(route.graph.edges(data=True)) == sorted(expected.edges(data=True))
    assert llm_flow.route(run).graph.graph == llm_flow.build_graph(run).graph, "the same defaults"
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_folders["gpt2"]).eval()
    with torch.no_grad():
        probs = torch.softmax(model(run.tokens[None]).logits[0, 2].double(), -1)
    best = int(probs.argmax())
    assert probs[best] - torch.topk(probs, 2).values[1] > 1e-3, "the top token is not a near tie"
    assert abs(float(probs[best]) * 1000 % 1 - 0.5) > 0.01, "float32 cannot round it the other way"
    summary = route.summary()
    token, predicted = run.str_tokens[2], run.model.decode_tokens([best])[0]
    assert summary["token"] == f"2 {token!r} → predicts {predicted!r} ({float(probs[best]):.1%})"
    assert summary["model"] == run.model.name and summary["threshold"] == "0.05 (not renormalised)"
    assert llm_flow.route(run, threshold=0.1).summary()["threshold"] == "0.1 (renormalised)"
    assert summary["size"] == f"{expected.number_of_nodes()} nodes, {expected.number_of_edges()} edges"
    frame = route.to_frame()
    assert sorted(zip(frame["source"], frame["dest"], frame["weight"])) == sorted(expected.edges(data="weight"))
    from llm_flow.figures.route import route_figure

    wide, compact = route_figure(expected).to_dict(), route_figure(expected, compact=True).to_dict()
    assert wide != compact and route.figure().to_dict() == wide and route.figure(compact=True).to_dict() == compact
    # the five heads and FFN blocks with the most weight, summed here from the edges
    graph = llm_flow.build_graph(run)
    heads: dict[tuple[int, int], float] = {}
    ffns = []
    for _, dest, data in graph.edges(data=True):
        layer = graph.nodes[dest]["layer"]
        if data["kind"] == "attention":
            for head, weight in enumerate(data["heads"]):
                heads[layer, head] = heads.get((layer, head), 0.0) + weight
        elif data["kind"] == "ffn" and dest.startswith("I"):
            ffns.append((data["weight"], layer, graph.nodes[dest]["position"]))
    assert len(heads) > 5 and len(ffns) > 5, "the lists are cut"
    top = llm_flow.route(run).summary()
    expected_heads = sorted(heads.items(), key=lambda item: -item[1])[:5]
    assert [(r.layer, r.head) for r in top["top heads"].itertuples()] == [key for key, _ in expected_heads]
    assert top["top heads"]["weight"].tolist() == pytest.approx([w for _, w in expected_heads])
    expected_ffns = sorted(ffns, reverse=True)[:5]
    assert [(r.layer, r.position) for r in top["top FFN blocks"].itertuples()] == [(l, p) for _, l, p in expected_ffns]
    assert top["top FFN blocks"]["weight"].tolist() == pytest.approx([w for w, *_ in expected_ffns])
    assert top["top FFN blocks"]["token"].tolist() == [run.str_tokens[p] for *_, p in expected_ffns]


def test_the_graph_as_json_reads_back_as_the_same_graph(tiny_models):
    import json

    from llm_flow.routes.graph import graph_json

    graph = llm_flow.build_graph(tiny_models("gpt2").run("One, two, three, four"), -1, 0.04)
    back = nx.node_link_graph(json.loads(graph_json(graph)), edges="edges")
    assert back.is_directed() and back.graph == graph.graph
    assert dict(back.nodes(data=True)) == dict(graph.nodes(data=True))
    assert sorted(back.edges(data=True)) == sorted(graph.edges(data=True))


@pytest.mark.parametrize("name", ["X_0", "A3_5", "M0_12", "I11_0", "I4_1->A5_3", "X_2->M0_2"])
def test_node_and_edge_names_read_back(name):
    from llm_flow.routes.nodes import EdgeId, NodeId, parse_element

    element = parse_element(name)
    assert str(element) == name and isinstance(element, EdgeId if "->" in name else NodeId)


@pytest.mark.parametrize("name", ["", "X0_1", "A_3", "A3_", "Q1_2", "A-1_2", "I4_1->", "->A5_3", "A1_2->A1_3->I1_3", "I4_1-A5_3"])
def test_names_that_are_neither_a_node_nor_an_edge_are_refused(name):
    from llm_flow.routes.nodes import parse_element

    with pytest.raises(llm_flow.ArgumentError, match="is not a route-graph (node|edge) name"):
        parse_element(name)


@pytest.mark.parametrize(
    "kind, layer, position, message",
    [
        ("Q", 0, 1, r"unknown node kind 'Q' \(use one of X, A, M, I, C\)"),
        ("C", 0, 1, "no such node: kind 'C', layer 0, position 1"),  # cross-attention: encoder–decoders only
        ("X", 2, 0, "no such node: kind 'X', layer 2, position 0"),
        ("A", -1, 0, "no such node: kind 'A', layer -1, position 0"),
        ("I", 1, -1, "no such node: kind 'I', layer 1, position -1"),
    ],
)
def test_a_node_that_cannot_exist_is_refused(kind, layer, position, message):
    from llm_flow.routes.nodes import NodeId

    with pytest.raises(llm_flow.ArgumentError, match=message):
        NodeId(kind, layer, position)

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

    def ffn(self, layer):
        return self.ffn_share[layer], self.ffn_residual[layer]


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

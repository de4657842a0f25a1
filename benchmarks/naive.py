"""The naive reference: what the existing tool does, written plainly, for comparison only.

Per layer it materialises the whole decomposition ``z[i, j, h, :]`` ([T, T, heads, d_model]),
takes L1 distances to every whole, normalises, then fills a networkx graph with Python loops over
every (i, j) pair (each edge carrying its per-head split), and finally prunes from the target.
It reads the same cached activations as our code, so its time excludes the forward pass exactly
like ours does. It is kept reasonable (one buffer reused in place, tensors turned into Python
lists once per layer) so the comparison is not against a straw man.
"""

from __future__ import annotations

import networkx as nx
import torch

from llm_flow.models.run import Run

FLOAT_BYTES = 4
EDGE_BYTES = 900  # one networkx edge with its attribute dict and per-head list (measured ~800-900 at T = 256)


def estimated_bytes(n_tokens: int, n_heads: int, d_model: int, n_layers: int) -> int:
    """Peak memory of `route_graph`: one layer's decomposition plus the full graph."""
    decomposition = n_tokens**2 * n_heads * d_model * FLOAT_BYTES
    graph = n_layers * (n_tokens * (n_tokens + 1) // 2 + 3 * n_tokens) * EDGE_BYTES
    return decomposition + graph


def layer_contributions(run: Run, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """c_heads [T, T, H], c_res [T] of resid_mid; c_ffn [T], c_ffn_res [T] of resid_post."""
    act = run.layer(layer)
    w_o = run.model.attention_output_weight(layer).float()  # [H, d_head, d]
    values = act.values.float().repeat_interleave(w_o.shape[0] // act.values.shape[1], dim=1)
    head_vectors = torch.einsum("jhk,hkd->jhd", values, w_o)  # [T, H, d]
    pattern = act.pattern.dense().float()  # [H, T, T]
    whole = act.resid_mid.float()  # [T, d]
    decomposition = pattern.permute(1, 2, 0)[..., None] * head_vectors[None]  # [T, T, H, d]
    distance = decomposition.neg_().add_(whole[:, None, None, :]).abs_().sum(-1)  # ||y_i - z_ijh||_1
    del decomposition
    norm = whole.abs().sum(-1)
    causal = torch.ones(run.n_tokens, run.n_tokens).tril()[..., None]
    prox_heads = (norm[:, None, None] - distance).clamp_min(0) * causal
    prox_res = _proximity(whole, act.resid_pre.float())
    total = prox_heads.sum((1, 2)) + prox_res
    prox_ffn = _proximity(act.resid_post.float(), act.mlp_out.float())
    prox_ffn_res = _proximity(act.resid_post.float(), whole)
    ffn_total = prox_ffn + prox_ffn_res
    return prox_heads / total[:, None, None], prox_res / total, prox_ffn / ffn_total, prox_ffn_res / ffn_total


def full_graph(run: Run) -> nx.DiGraph:
    """Every edge of every layer, filled pair by pair."""
    graph = nx.DiGraph()
    for layer in range(run.n_layers):
        heads, residual, ffn, ffn_residual = (t.tolist() for t in layer_contributions(run, layer))
        for i in range(run.n_tokens):
            after_attention = f"A{layer}_{i}"
            for j in range(run.n_tokens):
                if j > i:
                    continue
                share = residual[i] if j == i else 0.0
                graph.add_edge(
                    _input_node(layer, j),
                    after_attention,
                    weight=sum(heads[i][j]) + share,
                    heads=heads[i][j],
                    residual=share,
                )
            graph.add_edge(after_attention, f"I{layer}_{i}", weight=ffn_residual[i])
            graph.add_edge(f"M{layer}_{i}", f"I{layer}_{i}", weight=ffn[i])
            graph.add_edge(after_attention, f"M{layer}_{i}", weight=ffn[i])
    return graph


def prune(full: nx.DiGraph, target_node: str, threshold: float) -> nx.DiGraph:
    """Keep, top-down from the target, every incoming edge above the threshold (renormalised)."""
    kept = nx.DiGraph()
    kept.add_node(target_node)
    stack, seen = [target_node], {target_node}
    while stack:
        node = stack.pop()
        survivors = [(u, d["weight"]) for u, _, d in full.in_edges(node, data=True) if d["weight"] > threshold]
        total = sum(w for _, w in survivors)
        for u, w in survivors:
            kept.add_edge(u, node, weight=w / total)
            if u.startswith("M"):  # the FFN node carries its flow on from the residual after attention
                u = "A" + u[1:]
                kept.add_edge(u, "M" + u[1:], weight=w / total)
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return kept


def route_graph(run: Run, target: int, threshold: float) -> nx.DiGraph:
    """The naive pipeline end to end: contributions, full graph, pruning."""
    target = run.position(target)
    return prune(full_graph(run), f"I{run.n_layers - 1}_{target}", threshold)


def _input_node(layer: int, position: int) -> str:
    return f"X_{position}" if layer == 0 else f"I{layer - 1}_{position}"


def _proximity(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    return (whole.abs().sum(-1) - (whole - part).abs().sum(-1)).clamp_min(0)

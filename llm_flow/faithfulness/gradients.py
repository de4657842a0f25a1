"""Gradients of the metric with respect to every node of the route graph, for EAP and EAP-IG.

A node's value is a residual state: ``A{l}_i`` is ``resid_mid[i]``, ``I{l}_i`` is
``resid_post[i]``. Its gradient is read by adding a zero vector δ to what the block adds to the
residual (after attention for ``A``, after the FFN for ``I``): the state then equals δ plus
itself, everything downstream reads it, and ∂m/∂δ is ∂m/∂(state). (The bridge's
``hook_resid_mid`` sits on the FFN's norm input, off the residual path: a gradient read there
would miss every later layer.)

For EAP-IG the input embeddings (``resid_pre`` of layer 0) move on a straight line from the
ablated input to the clean one and the gradients are averaged over the points; with the
embeddings' own gradient this is integrated gradients on the input, whose attributions add up
to m(clean) - m(ablated input) as the number of points grows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_flow.faithfulness.problem import Problem

#: Activation memory one batched gradient pass may use (bytes), as attribution does.
MEMORY_BUDGET = 2 << 30


@dataclass(frozen=True)
class NodeGradients:
    """∂m/∂(node) per layer and position, averaged over the points of the path."""

    embeddings: torch.Tensor  # [T, d], the input of layer 0
    resid_mid: torch.Tensor | None  # [L, T, d] (A nodes); None for parallel blocks
    resid_post: torch.Tensor  # [L, T, d] (I nodes)


def node_gradients(problem: Problem, steps: int | None = None) -> NodeGradients:
    """Gradients at the clean input (`steps` None: EAP) or averaged over `steps` points between
    the ablated input and the clean one, at the midpoints ((k + ½) / steps of the way, EAP-IG)."""
    run = problem.run
    clean = run.layer(0).resid_pre.float()
    if steps is None:
        points = clean[None]
    else:
        ablated = problem.values.state(0, "resid_pre")
        alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
        points = ablated[None] + alphas[:, None, None] * (clean - ablated)[None]
    size = _batch_size(problem, len(points))
    parts = [_gradients(problem, points[start : start + size]) for start in range(0, len(points), size)]
    n = len(points)

    def mean(index: int) -> torch.Tensor | None:
        if parts[0][index] is None:
            return None
        return sum(part[index] for part in parts) / n

    return NodeGradients(mean(0), mean(1), mean(2))


def _gradients(problem: Problem, points: torch.Tensor):
    """Sums over the batch `points` [B, T, d] of the three gradients."""
    run, contrast = problem.run, problem.contrast
    model = run.model
    bridge = model.bridge
    n_layers, (n_tokens, d_model) = run.n_layers, run.layer(0).resid_pre.shape
    batch = len(points)
    dtype = run.layer(0).resid_pre.dtype
    inputs = points.to(dtype).clone().requires_grad_(True)
    mids = [] if run.parallel else [torch.zeros(batch, n_tokens, d_model, dtype=dtype, requires_grad=True) for _ in range(n_layers)]
    posts = [torch.zeros(batch, n_tokens, d_model, dtype=dtype, requires_grad=True) for _ in range(n_layers)]
    hooks: list[tuple[str, Callable]] = [("blocks.0.hook_resid_pre", lambda x, hook: inputs)]
    for layer in range(n_layers):
        if mids:
            hooks.append((f"blocks.{layer}.hook_attn_out", _adding(mids[layer])))
        hooks.append((f"blocks.{layer}.hook_mlp_out", _adding(posts[layer])))
    tokens = run.tokens[None].expand(batch, -1)
    with model.lock, torch.enable_grad(), model.no_kept_patterns():
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
        metric = contrast.value(logits[:, contrast.position]).sum()
        grads = torch.autograd.grad(metric, [inputs, *mids, *posts])
    embeddings = grads[0].float().sum(0)
    mid = torch.stack([g.float().sum(0) for g in grads[1 : 1 + len(mids)]]) if mids else None
    post = torch.stack([g.float().sum(0) for g in grads[1 + len(mids) :]])
    return embeddings, mid, post


def _adding(delta: torch.Tensor) -> Callable:
    def hook(out: torch.Tensor, hook) -> torch.Tensor:
        return out + delta.to(out.dtype)

    return hook


def _batch_size(problem: Problem, n_points: int) -> int:
    """Points per pass that fit `MEMORY_BUDGET`: every layer keeps its activations for the
    backward pass (attention probabilities dominate, heads x T^2)."""
    info = problem.model.info
    n_tokens = problem.run.n_tokens
    per_layer = 3 * info.n_heads * n_tokens + 10 * info.d_model + 4 * info.d_mlp
    per_point = n_tokens * per_layer * 4 * info.n_layers
    return max(1, min(n_points, MEMORY_BUDGET // per_point))

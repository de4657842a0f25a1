"""How one attention weight is made (BertViz's neuron view), on every model llm-flow loads.

For layer ``l``, head ``h`` and query ``i``: the query vector, each key vector (after rotary
embeddings; for grouped-query attention the key head that serves ``h``), their elementwise
product, the scaled (and, for Gemma 2, soft-capped) dot products, the mask and the softmax.

The Run does not keep queries and keys, but it keeps ``resid_pre`` of every layer: exactly the
input of block ``l``. So block ``l`` alone is called on it, with the positions, rotary cos/sin and
mask the model hands its blocks (taken from a pass stopped as it enters the first block: only the
embeddings and rotary tables are computed), and stopped as soon as q and k are known: the
attention, the MLP and the other layers are never computed. The result is checked against the
weights the model used, over the whole layer, before anything is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch

from llm_flow.validation import check_count
from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.models.run import Run
from llm_flow.views import block_pass
from llm_flow.views.attention import TokenWindow, check_head, check_layer
from llm_flow.views.block_pass import BlockStop, call_block

# Largest difference between our softmax and the model's weights that still counts as the same
# computation: float32 rounding, or half-precision activations re-scored in float32.
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
_HALF_TOLERANCE = 2e-2
_NOT_ROTATED = "none (positions enter through the embeddings)"


@dataclass(frozen=True, eq=False)
class QueryKeys:
    """Queries and keys of one layer exactly as its attention scores use them."""

    layer: int
    queries: torch.Tensor  # [T, H, d_head] float32, after rotary embeddings
    keys: torch.Tensor  # [T, n_kv_heads, d_head] float32, after rotary embeddings
    scale: float  # scores = scale * q.k (1/sqrt(d_head), Gemma 2: query_pre_attn_scalar^-1/2)
    softcap: float | None  # scores = softcap * tanh(scores / softcap) (Gemma 2)
    sliding_window: int | None  # query i sees sources j > i - sliding_window only
    rotation: str  # how positions entered q and k, in words
    causal: bool = True  # query i sees sources j <= i only; an encoder's queries see every source

    @property
    def rotated(self) -> bool:
        """True when q and k were rotated by position (rotary embeddings)."""
        return self.rotation != _NOT_ROTATED


@dataclass(frozen=True)
class NeuronView:
    """The making of one query's attention weights through one head."""

    layer: int
    head: int
    kv_head: int  # the key/value head serving `head` (differs under grouped-query attention)
    query: int
    query_token: str
    positions: np.ndarray  # [S] source positions shown (all <= query in a decoder)
    tokens: tuple[str, ...]  # [S]
    query_vector: np.ndarray  # [d_head]
    keys: np.ndarray  # [S, d_head]
    products: np.ndarray  # [S, d_head] q ⊙ k, whose sum over d_head is the dot product
    dots: np.ndarray  # [S] q . k
    scores: np.ndarray  # [S] scaled, soft-capped dot products; -inf where masked
    probabilities: np.ndarray  # [S] softmax over every allowed source of the query
    model_weights: np.ndarray  # [S] the weights the model used (from the Run)
    scale: float
    softcap: float | None
    sliding_window: int | None
    rotation: str
    max_error: float  # max |softmax - model's weights| over all sources 0..query
    hidden_weight: float  # softmax weight of the sources not shown (window, top-k)


@dataclass(frozen=True)
class QueryKeysOf:
    """Key of a layer's `QueryKeys` in a Run's derived store."""

    layer: int


_ROWS_PER_CHECK = 256  # query rows scored at once by the layer check: [H, 256, T] floats


def query_keys(run: Run, layer: int) -> QueryKeys:
    """Queries and keys of `layer`, computed by block `layer` alone from the Run's ``resid_pre``
    and remembered with the Run, so other heads and queries of the layer cost nothing (memory:
    T x (H + n_kv) x d_head floats a layer)."""
    layer = check_layer(run, layer)
    return run.derived(QueryKeysOf(layer), partial(_reproducing, run, layer))


def neuron_view(
    run: Run,
    layer: int,
    head: int,
    query: int,
    window: TokenWindow | None = None,
    top_k: int | None = None,
) -> NeuronView:
    """Query, keys, products, scores and softmax of one head for one query token.

    The softmax runs over all of the query's sources; `window` and `top_k` (strongest sources by
    weight) only choose which of them are shown. Raises `UnsupportedModelError` when the
    recomputed weights differ from the model's (an attention variant llm-flow does not model).
    """
    layer, head, query = check_layer(run, layer), check_head(run, head), run.position(query)
    check_count(top_k, "top-k")
    qk = query_keys(run, layer)
    n_heads, n_kv = qk.queries.shape[1], qk.keys.shape[1]
    kv_head = head // (n_heads // n_kv)
    q = qk.queries[query, head]  # [d_head]
    keys = qk.keys[: _source_count(qk, query), kv_head]  # [S, d_head]
    products = keys * q
    dots = products.sum(-1)
    scores = masked_scores(qk, dots[None], torch.tensor([query]))[0]
    probabilities = torch.softmax(scores, -1)
    model_weights = run.layer(layer).pattern.row(query)[head].float().cpu()
    max_error = float((probabilities - model_weights).abs().max())
    _check_reproduced(run, layer, max_error)
    shown = _shown_sources(qk, query, probabilities, window, top_k)
    return NeuronView(
        layer=layer,
        head=head,
        kv_head=kv_head,
        query=query,
        query_token=run.str_tokens[query],
        positions=shown.numpy(),
        tokens=tuple(run.str_tokens[p] for p in shown.tolist()),
        query_vector=q.numpy(),
        keys=keys[shown].numpy(),
        products=products[shown].numpy(),
        dots=dots[shown].numpy(),
        scores=scores[shown].numpy(),
        probabilities=probabilities[shown].numpy(),
        model_weights=model_weights[shown].numpy(),
        scale=qk.scale,
        softcap=qk.softcap,
        sliding_window=qk.sliding_window,
        rotation=qk.rotation,
        max_error=max_error,
        hidden_weight=float(1.0 - probabilities[shown].sum()),
    )


def _source_count(qk: QueryKeys, query: int) -> int:
    """Sources 0 .. count - 1 that `query` may read."""
    return query + 1 if qk.causal else qk.keys.shape[0]


def _shown_sources(
    qk: QueryKeys, query: int, probabilities: torch.Tensor, window: TokenWindow | None, top_k: int | None
) -> torch.Tensor:
    """Source positions to show, ascending: the window's sources the query reads, then top-k."""
    count = _source_count(qk, query)
    start, stop = (0, count) if window is None else (window.start, min(window.stop, count))
    if start >= stop:
        raise ArgumentError(
            f"the window {window.start}..{window.stop - 1} has no source for query {query}: "
            "a query only attends to itself and earlier tokens"
        )
    shown = torch.arange(start, stop)
    if top_k is not None and top_k < len(shown):
        shown = shown[probabilities[shown].topk(top_k).indices].sort().values
    return shown


def masked_scores(qk: QueryKeys, dots: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Dot products [..., r, S] of the queries at positions `queries` [r] with sources 0..S-1,
    scaled, soft-capped and masked as the model does (-inf where a query may not look)."""
    scores = dots * qk.scale
    if qk.softcap is not None:
        scores = qk.softcap * torch.tanh(scores / qk.softcap)
    sources = torch.arange(dots.shape[-1])
    hidden = sources[None, :] > queries[:, None] if qk.causal else torch.zeros(len(queries), len(sources), dtype=torch.bool)
    if qk.sliding_window is not None:
        hidden |= sources[None, :] <= queries[:, None] - qk.sliding_window
    return scores.masked_fill(hidden, float("-inf"))


def _check_reproduced(run: Run, layer: int, max_error: float) -> None:
    if not max_error <= _tolerance(run, layer):
        raise UnsupportedModelError(
            f"the neuron view cannot reproduce layer {layer}'s attention weights of "
            f"{run.model.info.architecture} (largest difference {max_error:.2g}): its attention "
            "computes scores in a way llm-flow does not model; head and model views still work"
        )


def _tolerance(run: Run, layer: int) -> float:
    return _TOLERANCE.get(run.layer(layer).resid_pre.dtype, _HALF_TOLERANCE)


def _reproducing(run: Run, layer: int) -> QueryKeys:
    """Block `layer`'s q and k from the first block inputs that reproduce the layer's weights.

    A model hands every block of one type the same positions, rotary cos/sin and mask, so the
    inputs of the first block of `layer`'s type serve: block 0 (nothing but the embeddings runs)
    unless the config gives layers types (Gemma 2 and 3: sliding and full; Gemma 3 rotates them
    with different bases). Failing that, the layer's own inputs (a pass up to it). When neither
    reproduces, the last is returned and `neuron_view` refuses it with the reason."""
    for source in block_pass.input_sources(run, layer):
        captured = _capture(run, layer, source)
        if _layer_error(run, captured) <= _tolerance(run, layer):
            break
    return captured


def _capture(run: Run, layer: int, source: int) -> QueryKeys:
    """q and k of `layer`: block `layer` called on the Run's ``resid_pre`` with the other inputs
    block `source` received, and stopped once q and k are known (after the rotary hooks when the
    attention fires them, else when it has the scores): no softmax, attention output or MLP."""
    model = run.model
    bridge = model.bridge
    block = bridge.blocks[layer]
    store: dict[str, torch.Tensor] = {}

    def keep(short: str):
        def hook(tensor: torch.Tensor, hook) -> None:
            store[short] = tensor[0].detach().float().cpu()
            if short == "rot_k" and "rot_q" in store:
                raise BlockStop

        return hook

    def stop(tensor: torch.Tensor, hook) -> None:
        raise BlockStop

    hooks = [
        (f"blocks.{layer}.attn.hook_{short}", keep(short))
        for short in ("q", "k", "rot_q", "rot_k", "cos", "sin")
        if f"blocks.{layer}.attn.hook_{short}" in bridge.hook_dict
    ]
    hooks.append((f"blocks.{layer}.attn.hook_attn_scores", stop))
    call_block(run, layer, source, hooks)
    queries, keys, rotation = _rotated(store)
    hf_attn = block.attn.original_component
    softcap = getattr(hf_attn, "attn_logit_softcapping", None)
    window = getattr(hf_attn, "sliding_window", None)
    return QueryKeys(
        layer=layer,
        queries=queries,
        keys=keys,
        scale=float(getattr(hf_attn, "scaling", None) or queries.shape[-1] ** -0.5),
        softcap=float(softcap) if softcap else None,
        sliding_window=int(window) if window else None,
        rotation=rotation,
        causal=run.layer(layer).pattern.causal,
    )


def _layer_error(run: Run, qk: QueryKeys) -> float:
    """Largest |softmax(scores) - the model's weight| over every head, query and source."""
    pattern = run.layer(qk.layer).pattern
    n_heads, n_kv = qk.queries.shape[1], qk.keys.shape[1]
    keys = qk.keys.repeat_interleave(n_heads // n_kv, dim=1)  # [T, H, d_head]: head h reads kv head h // group
    worst = 0.0
    for start in range(0, pattern.n_tokens, _ROWS_PER_CHECK):
        rows = torch.arange(start, min(start + _ROWS_PER_CHECK, pattern.n_tokens))  # [r]
        stop = _source_count(qk, int(rows[-1]))  # sources a row of this chunk can see
        dots = torch.einsum("rhd,shd->hrs", qk.queries[rows], keys[:stop])  # [H, r, stop]
        probabilities = torch.softmax(masked_scores(qk, dots, rows), -1)
        used = pattern.rows(rows, stop).float().cpu().transpose(0, 1)  # [H, r, stop]
        worst = max(worst, float((probabilities - used).abs().max()))
    return worst


def _rotated(store: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Post-rotary q [T, H, d] and k [T, n_kv, d]: from the rotary hooks when the model's
    attention fires them, else by the rotate-half rule with the model's own cos/sin (GPT-NeoX's
    fused attention in TransformerLens fires ``hook_cos``/``hook_sin`` but not ``hook_rot_q``)."""
    if "rot_q" in store and "rot_k" in store:
        return _heads(store["rot_q"]), _heads(store["rot_k"]), "rotary, as the model applied it"
    q, k = _heads(store["q"]), _heads(store["k"])
    if "cos" not in store:
        return q, k, _NOT_ROTATED
    cos, sin = store["cos"][:, None, :], store["sin"][:, None, :]  # [T, 1, rotary_dim]
    rotary_dim = cos.shape[-1]
    return (
        _rotate(q, cos, sin, rotary_dim),
        _rotate(k, cos, sin, rotary_dim),
        f"rotary on {rotary_dim} of {q.shape[-1]} dimensions, with the model's cos/sin",
    )


def _heads(tensor: torch.Tensor) -> torch.Tensor:
    """The hooks fire per position and head, [T, heads, d_head]; refuse anything else."""
    if tensor.dim() != 3:
        raise UnsupportedModelError(f"unexpected query/key layout {tuple(tensor.shape)} from TransformerLens")
    return tensor


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)


def neuron_table(view: NeuronView) -> pd.DataFrame:
    """One row per shown source: its dot product, score, softmax weight and the model's weight."""
    return pd.DataFrame({
        "source": view.positions,
        "token": list(view.tokens),
        "dot": view.dots,
        "score": view.scores,
        "softmax": view.probabilities,
        "model_weight": view.model_weights,
    })  # fmt: skip

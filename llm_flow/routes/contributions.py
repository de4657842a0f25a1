"""ALTI contributions of attention heads, residual streams and FFN blocks (docs/method.md).

A representation ``y`` that is a sum of parts gets, for each part, ``prox_k = max(||y||_1 -
||y - z_k||_1, 0)`` and ``c_k = prox_k / Σ_j prox_j``. Biases that belong to no part (``b_O``,
the FFN output bias in the neuron view) enter ``y`` but get no share.

Attention parts are ``z[i, j, h] = A[h, i, j] * (v[j, h] + b_V[h]) @ W_O[h]`` (times the post-norm
gain for Gemma-style blocks; through the linearised LayerNorm for post-LN encoders, whose
queries see every source j, docs/method.md#encoders). Nothing of size [T, T, H, d_model] is ever built: rows of query
positions are processed in blocks and the proximities come from :mod:`llm_flow.routes.proximity`,
which works on the factored parts (attention pattern, values, W_O) of one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from llm_flow.models.run import Run
from llm_flow.routes.proximity import AttentionLayer, attention_proximities, vector_proximity

_ROW_BLOCK_ELEMENTS = 1 << 24  # [rows, sources, heads] proximities held at once
# A block of consecutive rows computes its dot products for the whole [rows, sources] rectangle;
# at most this many rows per block keeps the non-causal part of it small.
_MAX_BLOCK_ROWS = 256


@dataclass(frozen=True)
class RowContributions:
    """Contributions to one attention representation (``resid_mid[i]``, or ``resid_post[i]`` for
    parallel blocks). ``heads[j, h]`` for the row's sources (j <= i in a decoder, every j in an
    encoder); the parts sum to 1."""

    position: int
    heads: torch.Tensor  # [sources of the row, H]
    residual: float
    ffn: float | None  # parallel blocks only: the FFN shares the same normalisation


@dataclass(frozen=True)
class Parts:
    """The vectors one representation is made of; ``whole == sum of everything here``."""

    whole: torch.Tensor  # [d]
    residual: torch.Tensor  # [d]
    pieces: torch.Tensor  # [S, H, d] attention parts, or [d_mlp, d] neuron parts
    bias: torch.Tensor  # [d] belongs to no part (zeros when the model has none)
    ffn: torch.Tensor | None = None  # [d] the FFN output as it enters the whole (attention: parallel blocks only)
    norm_bias: torch.Tensor | None = None  # [d] FFN side: a post-LN norm's β, so whole == residual + ffn + norm_bias


@dataclass(frozen=True)
class LayerContributions:
    """Every contribution of one layer, for all positions at once."""

    heads: torch.Tensor  # [T, T, H] attention parts (0 for j > i in a decoder)
    residual: torch.Tensor  # [T] residual's share of the attention representation
    ffn: torch.Tensor  # [T] the FFN's share of resid_post
    ffn_residual: torch.Tensor  # [T] the residual's share of resid_post (= residual for parallel blocks)


def head_vectors(run: Run, layer: int) -> torch.Tensor:
    """(v[j, kv(h)] + b_V) @ W_O[h] for every source j and query head h: [T, H, d_model]."""
    act = run.layer(layer)
    w_o = run.model.attention_output_weight(layer).float()  # [H, d_head, d]
    n_heads = w_o.shape[0]
    values = act.values.float()  # [T, n_kv, d_head]; query head h reads kv head h // group
    values = values.repeat_interleave(n_heads // values.shape[1], dim=1)
    return torch.einsum("thk,hkd->thd", values, w_o)


def attention_contributions(run: Run, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_heads[i, j, h]`` (0 for j > i) and the residual's share ``c_res[i]``: [T, T, H], [T]
    (docs/method.md#sequential-blocks).

    For parallel blocks the FFN takes part in the same normalisation (docs/method.md#parallel-blocks).
    """
    heads, residual, _ = _all_rows(run, layer)
    return heads, residual


def ffn_contributions(run: Run, layer: int, positions: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The FFN's share ``c_ffn[i]`` and the residual's share ``c_res[i]`` of ``resid_post``: [T], [T]
    (or [r], [r] for the given `positions` only: a route reads the few it reaches).

    Sequential blocks: parts ``resid_mid`` and ``mlp_out``. Parallel blocks: the joint
    normalisation with the attention parts, so ``c_res`` equals `attention_contributions`'.
    """
    act = run.layer(layer)
    if run.parallel and positions is None:
        _, residual, ffn = _all_rows(run, layer)
        return ffn, residual
    if run.parallel:
        rows = contribution_rows(run, layer, positions)
        return torch.tensor([row.ffn for row in rows]), torch.tensor([row.residual for row in rows])
    rows = slice(None) if positions is None else torch.tensor(positions, dtype=torch.int64, device=act.resid_post.device)
    gain = None if act.mlp_gain is None else act.mlp_gain[rows]
    whole = act.resid_post[rows].float()
    prox_ffn = vector_proximity(whole, _through_norm(run, act.mlp_out[rows], gain))
    prox_res = vector_proximity(whole, _through_norm(run, act.resid_mid[rows], gain))
    total = _safe(prox_ffn + prox_res)
    return prox_ffn / total, prox_res / total


def neuron_contributions(run: Run, layer: int, position: int) -> tuple[torch.Tensor, float]:
    """Per-neuron shares of one FFN node, and the share of everything else: [d_mlp], float
    (docs/method.md#neurons-of-one-ffn-node).

    Whole: ``resid_post[i]``. Parts: the residual the FFN was added to (``resid_mid[i]``; for
    parallel blocks ``resid_post[i] - mlp_out[i]``) and ``act[i, n] * W_out[n]`` per neuron.
    The output bias belongs to no part.
    """
    parts = ffn_parts(run, layer, position)
    prox_neurons = vector_proximity(parts.whole, parts.pieces)
    prox_res = vector_proximity(parts.whole, parts.residual)
    total = _safe(prox_neurons.sum() + prox_res)
    return prox_neurons / total, float(prox_res / total)


@dataclass(frozen=True)
class AttentionRow:
    """Key of one attention row's contributions in a Run's derived store (`contribution_rows`)."""

    layer: int
    position: int


@dataclass(frozen=True)
class AllPositions:
    """Key of one layer's contributions for every position (`full_contributions`)."""

    layer: int


def full_contributions(run: Run) -> list[LayerContributions]:
    """All contributions of all layers and positions, e.g. to switch target tokens instantly.

    Kept with the Run, so a second call and `build_graph` for any target afterwards compute no
    attention row. Memory: n_layers x T x T x heads floats.
    """
    return [run.derived(AllPositions(layer), partial(_layer_contributions, run, layer)) for layer in range(run.n_layers)]


def _layer_contributions(run: Run, layer: int) -> LayerContributions:
    heads, residual, parallel_ffn = _all_rows(run, layer)
    ffn, ffn_residual = (parallel_ffn, residual) if run.parallel else ffn_contributions(run, layer)
    return LayerContributions(heads, residual, ffn, ffn_residual)


def contribution_rows(run: Run, layer: int, positions: list[int]) -> list[RowContributions]:
    """Rows for the given query positions, computed once per Run and then reused (from the
    whole layer's table when `full_contributions` made it)."""
    store = run.derived_store
    table = store.peek(AllPositions(layer))
    if table is not None:
        return [_row_of(run, layer, table, p) for p in positions]
    rows = {p: store.peek(AttentionRow(layer, p)) for p in positions}
    missing = sorted(p for p, row in rows.items() if row is None)
    parts = _attention_layer(run, layer) if missing else None
    counts = _source_counts(run, layer, missing)
    block = _rows_per_block(run, max(counts, default=1))
    for start in range(0, len(missing), block):
        batch = missing[start : start + block]
        heads, residual, ffn = _rows(run, layer, torch.tensor(batch), parts)
        for k, position in enumerate(batch):
            row = RowContributions(
                position, heads[k, : counts[start + k]].cpu().clone(), float(residual[k]), None if ffn is None else float(ffn[k])
            )
            rows[position] = store.put(AttentionRow(layer, position), row)
    return [rows[p] for p in positions]


def _row_of(run: Run, layer: int, table: LayerContributions, position: int) -> RowContributions:
    """One row of a whole-layer table, as a view (no copy)."""
    ffn = float(table.ffn[position]) if run.parallel else None
    count = _source_counts(run, layer, [position])[0]
    return RowContributions(position, table.heads[position, :count], float(table.residual[position]), ffn)


def _source_counts(run: Run, layer: int, positions: list[int]) -> list[int]:
    """Sources each query row has: position + 1 in a decoder, every token in an encoder."""
    return run.layer(layer).pattern.source_counts(torch.tensor(positions, dtype=torch.int64)).tolist()


def attention_parts(run: Run, layer: int, position: int) -> Parts:
    """The actual part vectors of one attention representation (for checks and head views)."""
    act = run.layer(layer)
    position = run.position(position)
    whole = (act.resid_post if run.parallel else act.resid_mid)[position].float()
    weights = act.pattern.row(position).float()  # [H, S]
    vectors = _centered(run, head_vectors(run, layer)[: weights.shape[1]])
    pieces = weights.T[:, :, None] * vectors  # [S, H, d]
    bias = run.model.attention_output_bias(layer)
    bias = torch.zeros_like(whole) if bias is None else _centered(run, bias.float())
    if act.attn_gain is not None:
        pieces = pieces * act.attn_gain[position]
        bias = bias * act.attn_gain[position]
    if run.model.info.post_ln:
        bias = bias + run.model.post_ln_bias(layer, "ln1")
    gain = None if act.attn_gain is None else act.attn_gain[position]
    residual = _through_norm(run, act.resid_pre[position], gain)
    ffn = act.mlp_out[position].float() if run.parallel else None
    return Parts(whole, residual, pieces, bias, ffn)


def ffn_parts(run: Run, layer: int, position: int) -> Parts:
    """The part vectors of one FFN node: residual, one vector per neuron, and the output bias."""
    act = run.layer(layer)
    position = run.position(position)
    whole = act.resid_post[position].float()
    if act.experts is not None:  # the neurons of this token's experts, weighted by the router
        w_out, factors = run.model.active_neuron_weights(layer, act.experts, position)
        neuron_out = (act.neuron_acts[position].float() * factors)[:, None] * w_out
        bias = torch.zeros_like(whole)
    else:
        w_out = _centered(run, run.model.neuron_output_weight(layer).float())
        neuron_out = act.neuron_acts[position].float()[:, None] * w_out
        bias = run.model.neuron_output_bias(layer)
        bias = torch.zeros_like(whole) if bias is None else _centered(run, bias.float())
    gain = None if act.mlp_gain is None else act.mlp_gain[position]
    if gain is not None:
        neuron_out = neuron_out * gain
        bias = bias * gain
    norm_bias = torch.zeros_like(whole)
    if run.model.info.post_ln:
        norm_bias = run.model.post_ln_bias(layer, "ln2")
    ffn = _through_norm(run, act.mlp_out[position], gain)
    if run.parallel:
        residual = whole - act.mlp_out[position].float()
    else:
        residual = _through_norm(run, act.resid_mid[position], gain)
    return Parts(whole, residual, neuron_out, bias + norm_bias, ffn, norm_bias)


def _attention_layer(run: Run, layer: int) -> AttentionLayer:
    """The factored attention parts of one layer, built once and shared by all its row blocks."""
    act = run.layer(layer)
    return AttentionLayer.build(act.values, _centered(run, run.model.attention_output_weight(layer)), act.pattern)


def _centered(run: Run, vectors: torch.Tensor) -> torch.Tensor:
    """``x − mean(x)`` along d_model for post-LN blocks, whose norm centres every part (the
    linear map of docs/method.md#encoders); unchanged otherwise."""
    if not run.model.info.post_ln:
        return vectors
    vectors = vectors.float()
    return vectors - vectors.mean(-1, keepdim=True)


def _through_norm(run: Run, vectors: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    """A residual part as it enters the whole: through the linearised LayerNorm ``g ⊙ C(x)``
    in post-LN blocks (the residual is inside the norm there), itself otherwise."""
    if not run.model.info.post_ln:
        return vectors.float()
    return _centered(run, vectors) * gain


def _all_rows(run: Run, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Every row of a layer, in blocks of consecutive query positions."""
    n_tokens = run.n_tokens
    parts = _attention_layer(run, layer)
    heads = torch.zeros(n_tokens, n_tokens, parts.pattern.n_heads)
    residual = torch.zeros(n_tokens)
    ffn = torch.zeros(n_tokens) if run.parallel else None
    block = _rows_per_block(run, n_tokens)
    for start in range(0, n_tokens, block):
        stop = min(start + block, n_tokens)
        h, r, f = _rows(run, layer, torch.arange(start, stop), parts)
        heads[start:stop, : h.shape[1]] = h.cpu()
        residual[start:stop] = r.cpu()
        if ffn is not None:
            ffn[start:stop] = f.cpu()
    return heads, residual, ffn


def _rows(
    run: Run, layer: int, positions: torch.Tensor, parts: AttentionLayer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Normalised contributions for query rows `positions`: heads [r, max(positions) + 1, H]."""
    act = run.layer(layer)
    positions = positions.to(act.resid_pre.device)
    whole = (act.resid_post if run.parallel else act.resid_mid)[positions].float()
    gain = None if act.attn_gain is None else act.attn_gain[positions]
    prox_heads = attention_proximities(whole, gain, parts, positions)  # [r, S, H]
    prox_res = vector_proximity(whole, _through_norm(run, act.resid_pre[positions], gain))
    total = prox_res + prox_heads.sum((1, 2))
    prox_ffn = None
    if run.parallel:
        prox_ffn = vector_proximity(whole, act.mlp_out[positions])
        total = total + prox_ffn
    total = _safe(total)
    ffn = None if prox_ffn is None else prox_ffn / total
    return prox_heads.div_(total[:, None, None]), prox_res / total, ffn


def _rows_per_block(run: Run, n_sources: int) -> int:
    n_heads = run.layer(0).pattern.n_heads
    return max(1, min(_MAX_BLOCK_ROWS, _ROW_BLOCK_ELEMENTS // (n_sources * n_heads)))


def _safe(total: torch.Tensor) -> torch.Tensor:
    """A representation whose parts all have zero proximity gets zero contributions, not NaN."""
    return torch.where(total > 0, total, torch.ones_like(total))

"""Attention patterns as BertViz draws them (head view, model view), on any model llm-flow loads,
weighted three ways so a user sees where a head looked *and* what actually flowed.

Weight of source ``j`` for query ``i`` through head ``h`` of one layer, by weighting name:

* ``attention``: the attention weight ``A[h, i, j]``.
* ``norm``: ``A[h, i, j] · ‖(v[j, kv(h)] + b_V) W_O[h]‖₂``, the norm-based view of Kobayashi et
  al. (2020, *Attention is Not Only a Weight*), with the Euclidean (L2) norm as in that paper; for
  grouped-query attention ``v`` comes from the key/value head serving ``h``. Gemma-style post-norm
  gains are not applied (they scale every head of a position alike).
* ``alti``: ``c_heads[i, j, h]``, the route engine's share of ``resid_mid[i]`` carried from ``j``
  by ``h`` (L1 proximities; the residual takes the rest), as in `attention_contributions`.

Nothing here runs the model: patterns and values come from the `Run`. Long prompts are served by a
window of consecutive tokens (queries and sources), top-k sources per query and head aggregation;
what a query sends to tokens outside the window (before it; in an encoder, after it too) is kept
as one number per row (``outside``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from llm_flow.validation import check_aggregation, check_count, check_pair_part, check_weighting
from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run
from llm_flow.routes.contributions import contribution_rows


#: Largest [layers, heads, window, sources] block computed at once (256 MB of float32).
MAX_ROW_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class TokenWindow:
    """Consecutive token positions ``start .. stop - 1``, used both as queries and as sources."""

    start: int
    stop: int

    @property
    def positions(self) -> range:
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class AttentionView:
    """Weights of some heads of some layers over a window of tokens: what head and model views draw.

    ``weights[a, b, q, s]`` is the weight from query ``positions[q]`` to source ``positions[s]``
    through head ``head_labels[b]`` of layer ``layers[a]``; zero above the diagonal, for sources
    dropped by top-k and outside the chosen sentence-pair part.

    Cross-attention (an encoder–decoder's decoder reading the encoder) has sources of its own:
    then ``source_positions`` and ``source_tokens`` are set and ``weights`` is
    [layers, head_labels, queries, sources]; otherwise the queries are the sources.
    """

    weighting: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]  # model heads aggregated or shown one by one
    head_labels: tuple[str, ...]  # one per weights[:, b]: "head 3", or "mean of 9 heads"
    aggregate: str | None  # "mean" or "max" when the heads are folded into one
    positions: np.ndarray  # [W] int token positions of the window
    tokens: tuple[str, ...]  # [W] the window's tokens as decoded
    weights: np.ndarray  # [layers, head_labels, W, W] float32, query x source
    outside: np.ndarray  # [layers, head_labels, W] weight of each query to sources outside the window
    top_k: int | None
    split: int | None  # first token position of sentence B, or None
    part: str  # one of llm_flow.validation.PAIR_PARTS
    source_positions: np.ndarray | None = None  # [S] for cross-attention, else None (= positions)
    source_tokens: tuple[str, ...] | None = None  # [S] for cross-attention, else None (= tokens)

    @property
    def sources(self) -> tuple[np.ndarray, tuple[str, ...]]:
        """Positions and tokens of the sources (the columns of `weights`)."""
        if self.source_positions is None:
            return self.positions, self.tokens
        return self.source_positions, self.source_tokens

    @property
    def is_cross(self) -> bool:
        return self.source_positions is not None

    def segment(self, position: int) -> str:
        """'A' or 'B' for a token position when a split is set, else ''."""
        if self.split is None:
            return ""
        return "A" if position < self.split else "B"


def check_head(run: Run, head: int) -> int:
    n_heads = run.model.info.n_heads
    if not isinstance(head, (int, np.integer)) or not -n_heads <= head < n_heads:
        raise ArgumentError(f"head {head} is out of range: the model has {n_heads} heads per layer (use 0..{n_heads - 1})")
    return int(head) % n_heads


def check_layer(run: Run, layer: int) -> int:
    run.layer(layer)  # raises ArgumentError with the valid range
    return int(layer) % run.n_layers


def token_window(run: Run, center: int | None = None, size: int | None = None) -> TokenWindow:
    """``size`` consecutive tokens around ``center`` (default: the last token), shifted to stay
    inside the prompt. ``size=None`` is the whole prompt."""
    center = run.n_tokens - 1 if center is None else run.position(center)
    if check_count(size, "the window size (tokens)") is None:
        return TokenWindow(0, run.n_tokens)
    size = min(size, run.n_tokens)
    start = min(max(center - size // 2, 0), run.n_tokens - size)
    return TokenWindow(start, start + size)


def n_sources(run: Run, window: TokenWindow) -> int:
    """Sources a window's queries can read: up to the window's end in a decoder, all in an encoder."""
    return window.stop if run.layer(0).pattern.causal else run.n_tokens


def window_rows(run: Run, layers: Sequence[int], weighting: str, window: TokenWindow) -> torch.Tensor:
    """Weights of every head of `layers` from each query of `window` to sources ``0 .. S - 1``
    (S = `n_sources`): [L, H, W, S] float32 on the CPU, zero for sources after the query in a
    decoder.

    A handful of tensor operations for all layers together (a model view has 30 of them): on a
    busy CPU each small operation costs far more than its arithmetic."""
    check_weighting(weighting)
    layers = [check_layer(run, layer) for layer in layers]
    if weighting == "alti":
        return _alti_rows(run, layers, window)
    queries = torch.arange(window.start, window.stop)
    count = n_sources(run, window)
    # rows rebuilt (or read) for just this window: [L, W, H, S] -> [L, H, W, S]
    rows = torch.stack([run.layer(layer).pattern.rows(queries, count) for layer in layers]).float().transpose(1, 2)
    if weighting == "norm":
        norms = value_norms(run, layers, n_sources(run, window))
        rows = rows.mul_(norms.to(rows).permute(0, 2, 1)[:, :, None, :])
    return rows.cpu()


def value_norms(run: Run, layers: Sequence[int], n_sources: int) -> torch.Tensor:
    """``‖(v[j, kv(h)] + b_V) W_O[h]‖₂`` for sources ``0 .. n_sources - 1``: [L, S, H].

    As the quadratic form ``v G_h vᵀ`` with the d_head x d_head Gram matrix ``G_h = W_O[h] W_O[h]ᵀ``:
    no [T, H, d_model] tensor, ~10x less work at d_head 64. In float32 it agrees with the direct
    float64 norm to 5e-7 (relative) on every layer of SmolLM2: W_O has full row rank."""
    values = torch.stack([run.layer(layer).values[:n_sources] for layer in layers]).float()  # [L, S, kv, d_head]
    grams = torch.stack([run.model.attention_output_gram(layer) for layer in layers]).to(values.device)  # [L, H, d_head, d_head]
    values = values.repeat_interleave(grams.shape[1] // values.shape[2], dim=2)  # [L, S, H, d_head]
    squared = (torch.einsum("lshk,lhkm->lshm", values, grams) * values).sum(-1)
    return squared.clamp_min_(0).sqrt_()


def _alti_rows(run: Run, layers: list[int], window: TokenWindow) -> torch.Tensor:
    """The route engine's contribution rows (computed once per Run and remembered by it)."""
    out = torch.zeros(len(layers), n_sources(run, window), len(window), run.model.info.n_heads)  # [L, S, W, H]
    for k, layer in enumerate(layers):
        for q, row in enumerate(contribution_rows(run, layer, list(window.positions))):
            out[k, : row.heads.shape[0], q] = row.heads
    return out.permute(0, 3, 2, 1).contiguous()  # [L, H, W, S]


def attention_view(
    run: Run,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    weighting: str = "attention",
    window: TokenWindow | None = None,
    top_k: int | None = None,
    aggregate: str | None = None,
    split: int | None = None,
    part: str = "all",
) -> AttentionView:
    """Weights of the chosen layers (default all) and heads (default all) over a token window.

    ``aggregate`` ("mean" or "max") folds the chosen heads into one; ``top_k`` keeps the k
    strongest sources per query and head (after the pair filter); ``split`` marks the first token
    of sentence B and ``part`` keeps one query -> source segment pair ("all", "A->A", "B->A",
    "B->B", "A->B"; a causal model leaves "A->B" empty, an encoder lets A read B).
    """
    check_weighting(weighting)
    layers = tuple(range(run.n_layers)) if layers is None else tuple(check_layer(run, l) for l in layers)
    heads = tuple(range(run.model.info.n_heads)) if heads is None else tuple(check_head(run, h) for h in heads)
    if not layers or not heads:
        raise ArgumentError("choose at least one layer and one head")
    check_aggregation(aggregate)
    check_count(top_k, "top-k")
    _check_split(run.n_tokens, split, part)
    window = window or token_window(run)
    size = len(layers) * run.model.info.n_heads * len(window) * n_sources(run, window)
    if size > MAX_ROW_ELEMENTS:
        raise ArgumentError(
            f"{len(layers)} layers over a {len(window)}-token window is too much to compute at once "
            f"({size:,} weights): choose fewer layers or a smaller window"
        )
    rows = window_rows(run, layers, weighting, window)  # [L, H, W, S]
    tokens = tuple(run.str_tokens[p] for p in window.positions)
    return _folded(rows, window, tokens, weighting, layers, heads, top_k, aggregate, split, part)


def attention_view_of(
    weights: np.ndarray | torch.Tensor,
    tokens: Sequence[str],
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    top_k: int | None = None,
    aggregate: str | None = None,
    split: int | None = None,
    part: str = "all",
    source_tokens: Sequence[str] | None = None,
) -> AttentionView:
    """An `AttentionView` of attention weights computed elsewhere (a plain `transformers` model
    run with ``output_attentions=True``): `weights` [layers, heads, T, T], query x source, and
    the T `tokens`. `layers` names the layers of `weights` (default 0..L-1); the other options
    are those of `attention_view`. Nothing is masked: an encoder's weights are drawn as given.

    Cross-attention: `weights` [layers, heads, T, S] with `tokens` the T queries (decoder tokens)
    and `source_tokens` the S sources (encoder tokens), as BertViz's ``cross_attention``."""
    rows = weights.detach().float().cpu() if isinstance(weights, torch.Tensor) else torch.as_tensor(np.asarray(weights, np.float32))
    cross = source_tokens is not None
    if rows.dim() != 4 or (not cross and rows.shape[-1] != rows.shape[-2]):
        raise ArgumentError(
            f"attention weights must be [layers, heads, tokens, tokens] (got {tuple(rows.shape)}): "
            "pass the `attentions` of a model run with output_attentions=True"
        )
    n_layers, n_heads, n_tokens, n_sources_ = rows.shape
    if len(tokens) != n_tokens:
        raise ArgumentError(f"the attention covers {n_tokens} tokens but {len(tokens)} tokens were given")
    if cross and len(source_tokens) != n_sources_:
        raise ArgumentError(f"the attention reads {n_sources_} source tokens but {len(source_tokens)} were given")
    if cross and split is not None:
        raise ArgumentError("a sentence-pair split does not apply to cross-attention (queries and sources are two texts)")
    layers = tuple(range(n_layers)) if layers is None else tuple(int(layer) for layer in layers)
    if len(layers) != n_layers:
        raise ArgumentError(f"{len(layers)} layer numbers given for {n_layers} layers of weights")
    heads = tuple(range(n_heads)) if heads is None else tuple(heads)
    if not layers or not heads or not all(isinstance(h, (int, np.integer)) and 0 <= h < n_heads for h in heads):
        raise ArgumentError(f"choose at least one layer and heads among 0..{n_heads - 1} (got {list(heads)})")
    check_aggregation(aggregate)
    check_count(top_k, "top-k")
    _check_split(n_tokens, split, part)
    window = TokenWindow(0, n_tokens)
    return _folded(rows, window, tuple(tokens), "attention", layers, tuple(int(h) for h in heads), top_k, aggregate,
                   split, part, tuple(source_tokens) if cross else None)  # fmt: skip


def _folded(
    rows: torch.Tensor,
    window: TokenWindow,
    tokens: tuple[str, ...],
    weighting: str,
    layers: tuple[int, ...],
    heads: tuple[int, ...],
    top_k: int | None,
    aggregate: str | None,
    split: int | None,
    part: str,
    source_tokens: tuple[str, ...] | None = None,
) -> AttentionView:
    """The view of `rows` [L, every head, W, S sources]: chosen heads, folded, filtered.
    With `source_tokens` the sources are another text (cross-attention), all of them shown."""
    if len(heads) < rows.shape[1]:
        rows = rows[:, list(heads)]
    if aggregate is not None:
        rows = rows.mean(1, keepdim=True) if aggregate == "mean" else rows.amax(1, keepdim=True)
    if part != "all" and split is not None:
        rows = rows * _pair_mask(window, split, part, rows.shape[-1])
    if source_tokens is None:
        outside = rows[..., : window.start].sum(-1) + rows[..., window.stop :].sum(-1)  # [L, h, W]
        weights = rows[..., window.start : window.stop]  # [L, h, W, W]
    else:
        outside, weights = rows.new_zeros(rows.shape[:-1]), rows
    if top_k is not None:
        weights = _keep_top_k(weights, top_k)
    if aggregate is None:
        labels = tuple(f"head {h}" for h in heads)
    else:
        labels = (f"{aggregate} of {len(heads)} heads" if len(heads) > 1 else f"head {heads[0]}",)
    return AttentionView(
        weighting=weighting,
        layers=layers,
        heads=heads,
        head_labels=labels,
        aggregate=aggregate,
        positions=np.arange(window.start, window.stop),
        tokens=tokens,
        weights=weights.numpy().astype(np.float32),
        outside=outside.numpy().astype(np.float32),
        top_k=top_k,
        split=split,
        part=part,
        source_positions=None if source_tokens is None else np.arange(len(source_tokens)),
        source_tokens=source_tokens,
    )


def head_view(run: Run, layer: int, **options) -> AttentionView:
    """One layer, every chosen head: the data of BertViz's head view (see `attention_view`)."""
    return attention_view(run, layers=[layer], **options)


def model_view(run: Run, **options) -> AttentionView:
    """All chosen layers x heads: the data of BertViz's model view (see `attention_view`)."""
    return attention_view(run, **options)


def _check_split(n_tokens: int, split: int | None, part: str) -> None:
    check_pair_part(part, split)
    if split is not None and not 1 <= split < n_tokens:
        raise ArgumentError(f"split {split} must be the position of sentence B's first token, 1..{n_tokens - 1}")


def _pair_mask(window: TokenWindow, split: int, part: str, count: int) -> torch.Tensor:
    """[W, S] 1 where query (window) -> source (0 .. S - 1) belongs to the chosen part."""
    query_b = torch.arange(window.start, window.stop) >= split
    source_b = torch.arange(count) >= split
    want_query_b, want_source_b = part[0] == "B", part[-1] == "B"
    return ((query_b == want_query_b)[:, None] & (source_b == want_source_b)[None, :]).float()


def _keep_top_k(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the k largest sources of every row (ties may keep a few more zeros)."""
    k = min(k, weights.shape[-1])
    top = weights.topk(k, dim=-1)
    return torch.zeros_like(weights).scatter_(-1, top.indices, top.values)


def attention_table(view: AttentionView) -> pd.DataFrame:
    """The drawn weights as a long table, one row per non-zero (layer, head, query, source)."""
    layer, head, query, source = np.nonzero(view.weights)
    tokens = np.array(view.tokens, dtype=object)
    source_positions, source_tokens = view.sources
    return pd.DataFrame({
        "layer": np.array(view.layers)[layer],
        "head": np.array(view.head_labels, dtype=object)[head],
        "query": view.positions[query],
        "query_token": tokens[query],
        "source": source_positions[source],
        "source_token": np.array(source_tokens, dtype=object)[source],
        "weight": view.weights[layer, head, query, source],
    })  # fmt: skip

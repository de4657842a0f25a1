"""L1 proximities (docs/method.md#proximity), the inner loop of the whole tool.

For a whole ``y`` and a part ``z`` the proximity is ``max(||y||_1 - ||y - z||_1, 0)``. Written per
coordinate, ``|y_d| - |y_d - z_d| = s_d z_d - 2 max(s_d z_d - |y_d|, 0)`` with ``s_d = sign(y_d)``
(``+1`` where ``y_d = 0``). Summed over ``d`` this splits the proximity into

* a *linear* term ``s . z``. For attention parts ``z = a * g ⊙ (v W_O)`` it is
  ``a * ((s ⊙ g) W_O^T) . v``: project each whole once into the head's d_head-sized value space,
  and every (source, head) dot product becomes one batched matrix product the size of an
  attention-score computation (d_head instead of d_model per pair, no [T, T, H, d] anywhere);
* a *correction* ``2 Σ_d max(a s_d g_d vo_d - |y_d|, 0)`` that is non-zero only in coordinates where
  ``|y_d| / |g_d| < a |vo_d| <= a max|vo|``. Per whole, the kernel sorts only the coordinates
  below the largest ``a max|vo|`` of its row; each part walks them in order and stops at the first
  that cannot count, so a part with ``a max|vo| <= min_d |y_d| / |g_d|`` costs one comparison
  (on trained and random models alike a part visits ~0.5-3 coordinates on average).

Both terms are exact, so the fast path gives the same numbers as the direct formula (and avoids
the cancellation of subtracting two large L1 norms in float32). Nothing is approximated and no
part is skipped: the normalising sums downstream stay exact. (The triangle bound
``prox <= a ||vo||_1`` would let parts be skipped only at the price of an inexact normalisation;
with the linear term this cheap there is nothing left worth skipping.)

The correction is a numba kernel (numba is a required dependency). ``method="torch"`` computes
the direct per-coordinate formula in chunks instead; it runs on any device (CUDA tensors always
take it) and is the reference the fast path is tested against.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
import torch

from llm_flow.errors import ArgumentError
from llm_flow.models.run import Pattern

#: ``auto`` picks the numba kernel for CPU tensors and torch for GPU tensors; set this variable
#: to ``torch`` to use the plain path everywhere.
METHOD_ENV = "LLM_FLOW_KERNEL"
_CHUNK_ELEMENTS = 1 << 22  # elements of [rows, sources, heads, d_model] materialised at once (torch path)
# Numba's default thread pool must not be entered by two Python threads at once (app sessions).
_numba_lock = threading.Lock()
#: A block of rows whose parts can reach at most this fraction of d_model gets vo in those
#: coordinates only; beyond it, vo in every coordinate is made once and serves the layer's blocks.
_FEW_COORDINATES = 0.5
#: Keeps the Cauchy–Schwarz bound on |vo| above vo as rounded in float32 (relative error ~1e-6).
_BOUND_MARGIN = 1.001


@dataclass(frozen=True, eq=False)
class AttentionLayer:
    """One layer's attention parts in factored form, shared by every block of query rows:
    ``z[i, j, h] = pattern[h, i, j] * gain[i] ⊙ vo[j, h]`` with ``vo[j, h] = values[j, kv(h)] @ w_o[h]``.

    The correction reads ``vo`` only in the few coordinates where a part can exceed its whole
    (module docstring), so ``vo`` over all of d_model ([H, d, T], as much work as a layer's
    attention output) is made only when a block of rows needs most coordinates (a whole layer's
    rows); a route's few rows get ``vo`` in just the coordinates their parts can reach, which a
    cheap bound on ``max_d |vo|`` tells in advance."""

    values: torch.Tensor  # [T, n_kv, d_head] float32, value bias included
    w_o: torch.Tensor  # [H, d_head, d] float32
    pattern: Pattern  # rows asked block by block (rebuilt from queries and keys, or stored)
    bound: torch.Tensor  # [H, T] >= max_d |vo[j, h, d]|, by Cauchy–Schwarz (see `build`)

    @classmethod
    def build(cls, values: torch.Tensor, w_o: torch.Tensor, pattern: Pattern) -> "AttentionLayer":
        values, w_o = values.float(), w_o.float()
        n_heads = w_o.shape[0]
        # |vo[j, h, d]| = |v[j, kv(h)] . W_O[h][:, d]| <= ||v[j, kv(h)]|| * max_d ||W_O[h][:, d]||
        columns = w_o.norm(dim=1).amax(-1)  # [H]
        norms = values.norm(dim=-1).repeat_interleave(n_heads // values.shape[1], dim=1)  # [T, H]
        return cls(values, w_o, pattern, (norms * columns).T.contiguous() * _BOUND_MARGIN)

    @cached_property
    def vectors_t(self) -> torch.Tensor:
        """vo over every coordinate, [H, d, T], laid out so one coordinate of one head is contiguous
        over sources; computed once, when first asked."""
        return _vectors_t(self.values, self.w_o)

    @cached_property
    def vmax(self) -> torch.Tensor:
        """max_d |vo[j, h, d]|: [H, T]."""
        return _abs_max(self.vectors_t)

    @property
    def vectors(self) -> torch.Tensor:
        """vo as [T, H, d] (a view)."""
        return self.vectors_t.permute(2, 0, 1)

    def correction_vectors(
        self, key: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """What the correction kernel reads for rows with keys ``|y| / |g|`` [r, d] and weights
        [r, H, S]: the coordinates it may need (None: all), vo over them [H, c, >= S] and their
        max |vo| per part [H, >= S].

        A coordinate d can count for row k only if ``key[k, d] < a * max|vo|`` for some part of
        the row, so every coordinate with ``key[k, d] >= max_(h, j) a[k, h, j] * bound[h, j]``
        is left out without computing vo there: the kernel would walk past it adding nothing."""
        if "vectors_t" not in self.__dict__:  # all coordinates not made yet: maybe few are needed
            n_sources = weights.shape[-1]
            reach = (weights * self.bound[:, :n_sources]).amax((1, 2))  # [r]
            coords = torch.nonzero((key < reach[:, None]).any(0)).flatten()
            if len(coords) <= _FEW_COORDINATES * key.shape[1]:
                vectors_t = _vectors_t(self.values[:n_sources], self.w_o[:, :, coords])  # [H, c, S]
                return coords, vectors_t, _abs_max(vectors_t)
        return None, self.vectors_t, self.vmax


def _vectors_t(values: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """vo[j, h] = values[j, kv(h)] @ w_o[h], as [H, d, T]: one matrix product per key/value head."""
    n_sources, n_kv, d_head = values.shape
    n_heads, _, d_model = w_o.shape
    stacked = w_o.view(n_kv, n_heads // n_kv, d_head, d_model).transpose(2, 3).reshape(n_kv, -1, d_head)
    return torch.bmm(stacked, values.permute(1, 2, 0)).view(n_heads, d_model, n_sources)


def _abs_max(vectors_t: torch.Tensor) -> torch.Tensor:
    """max_d |vectors_t[h, d, j]|: [H, S] (zeros when there is no coordinate)."""
    if not vectors_t.shape[1]:
        return vectors_t.new_zeros(vectors_t.shape[0], vectors_t.shape[2])
    return torch.maximum(vectors_t.amax(1), -vectors_t.amin(1))  # max |.| without an |.| copy


def vector_proximity(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """Proximity of `part` to `whole` along the last axis (shapes broadcast): [...]."""
    whole, part = whole.float(), part.float()
    return (whole.abs() - (whole - part).abs()).sum(-1).clamp_min(0)


def attention_proximities(
    whole: torch.Tensor,
    gain: torch.Tensor | None,
    layer: AttentionLayer,
    positions: torch.Tensor,
    method: str = "auto",
) -> torch.Tensor:
    """Proximities of every attention part of the query rows `positions` (any order, any gaps).

    whole:     [r, d]  one row per query position
    gain:      [r, d]  elementwise post-norm gain on the attention output, or None
    positions: [r]     query positions; under a causal mask sources j > position are not parts
    returns    [r, S, H] float32 with S the most sources a row has (max(positions) + 1 under a
               causal mask, T for an encoder), zero for sources a row does not have
    """
    method = _choose(method, whole)
    whole = whole.float()
    gain = None if gain is None else gain.float()
    counts = layer.pattern.source_counts(positions)
    n_sources = int(counts.max())
    weights = layer.pattern.rows(positions, n_sources).float()  # [r, H, S]
    if method == "torch":
        return _heads_torch(whole, gain, layer.vectors[:n_sources].contiguous(), weights, counts)
    signed_gain = _signed_gain(whole, gain)
    dots = _factored_dots(signed_gain, layer.values[:n_sources], layer.w_o)
    packed, offsets = _packed_rows(weights)
    coords, vectors_t, vmax = layer.correction_vectors(_key(whole, gain), weights)
    if coords is not None:  # the correction reads these coordinates only
        whole, signed_gain = whole[:, coords], signed_gain[:, coords]
        gain = None if gain is None else gain[:, coords]
    return _corrected(dots, packed, offsets, whole, gain, signed_gain, vectors_t, vmax, counts)


def head_proximities(
    whole: torch.Tensor,
    gain: torch.Tensor | None,
    head_vectors: torch.Tensor,
    weights: torch.Tensor,
    positions: torch.Tensor,
    method: str = "auto",
) -> torch.Tensor:
    """Proximities of every attention part ``z[i, j, h] = weights[i, h, j] * gain[i] ⊙ head_vectors[j, h]``.

    The same kernel as `attention_proximities`, for parts given as plain vectors and dense weights.

    whole:        [r, d]      one row per query position
    gain:         [r, d]      elementwise post-norm gain on the attention output, or None
    head_vectors: [S, H, d]   (v_j + b_V) W_O[h] for every source j < S
    weights:      [r, H, S]   attention weights of each query row
    positions:    [r]         query position of each row: sources j > position are not parts
    returns       [r, S, H]   float32, zero for j > position
    """
    method = _choose(method, whole)
    whole, head_vectors, weights = whole.float(), head_vectors.float(), weights.float()
    gain = None if gain is None else gain.float()
    counts = positions.to(torch.int64) + 1
    if method == "torch":
        return _heads_torch(whole, gain, head_vectors, weights, counts)
    n_rows, n_heads, n_sources = weights.shape
    signed_gain = _signed_gain(whole, gain)
    dots = signed_gain @ head_vectors.reshape(n_sources * n_heads, -1).T  # [r, S * H]
    dots = dots.view(n_rows, n_sources, n_heads).permute(2, 0, 1).contiguous()  # [H, r, S]
    packed, offsets = _packed_rows(weights)
    vectors_t = head_vectors.permute(1, 2, 0).contiguous()
    vmax = vectors_t.abs().amax(1)
    return _corrected(dots, packed, offsets, whole, gain, signed_gain, vectors_t, vmax, counts)


def _packed_rows(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense rows [r, H, S] as the kernel reads them: [H, r * S], row k starting at k * S."""
    n_rows, n_heads, n_sources = weights.shape
    packed = weights.transpose(0, 1).reshape(n_heads, n_rows * n_sources)
    return packed, torch.arange(n_rows, dtype=torch.int64) * n_sources


def _choose(method: str, tensor: torch.Tensor) -> str:
    method = os.environ.get(METHOD_ENV, method) if method == "auto" else method
    if method not in ("auto", "numba", "torch"):
        raise ArgumentError(f"unknown proximity method {method!r}: use 'auto', 'numba' or 'torch'")
    if method == "auto":
        return "numba" if tensor.device.type == "cpu" else "torch"
    if method == "numba" and tensor.device.type != "cpu":
        raise ArgumentError(f"the numba kernel runs on the CPU only; use 'torch' or 'auto' for {tensor.device} tensors")
    return method


def _heads_torch(whole, gain, head_vectors, weights, counts) -> torch.Tensor:
    """The direct formula, per coordinate, in memory-bounded chunks of sources (row k has
    sources 0 .. counts[k] - 1)."""
    n_rows, d_model = whole.shape
    n_sources, n_heads, _ = head_vectors.shape
    out = whole.new_zeros(n_rows, n_sources, n_heads)
    chunk = max(1, _CHUNK_ELEMENTS // (n_heads * d_model))
    for k in range(n_rows):
        stop = int(counts[k])
        y = whole[k]
        vectors_k = head_vectors if gain is None else head_vectors * gain[k]
        for start in range(0, stop, chunk):
            end = min(start + chunk, stop)
            parts = weights[k, :, start:end].T[:, :, None] * vectors_k[start:end]  # [c, H, d]
            out[k, start:end] = (y.abs() - (y - parts).abs()).sum(-1)
    return out.clamp_min_(0)


def _signed_gain(whole: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    """``s ⊙ g`` per row: the linear term of a part is ``a * (s ⊙ g) . vo``."""
    sign = torch.where(whole >= 0, 1.0, -1.0)
    return sign if gain is None else sign * gain


def _factored_dots(signed_gain: torch.Tensor, values: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """``(s ⊙ g)_i . (v_j W_O[h])`` for every head h, row i, source j, as ``((s ⊙ g)_i W_O[h]^T) . v_j``.

    signed_gain [r, d], values [S, n_kv, d_head], w_o [H, d_head, d] -> [H, r, S]. Query heads
    that share a key/value head are stacked into one matrix product per key/value head.
    """
    n_rows = signed_gain.shape[0]
    n_sources, n_kv, _ = values.shape
    n_heads = w_o.shape[0]
    projected = torch.einsum("rd,hcd->hrc", signed_gain, w_o)  # [H, r, d_head]
    projected = projected.reshape(n_kv, (n_heads // n_kv) * n_rows, -1)  # [kv, group * r, d_head]
    return torch.bmm(projected, values.permute(1, 2, 0)).view(n_heads, n_rows, n_sources)


def _key(whole: torch.Tensor, gain: torch.Tensor | None, abs_whole: torch.Tensor | None = None) -> torch.Tensor:
    """``|y_d| / |g_d|`` per row and coordinate: a part's coordinate d can count only if
    ``a |vo_d|`` exceeds it (inf, or nan, where the gain is 0: never)."""
    abs_whole = whole.abs() if abs_whole is None else abs_whole
    return abs_whole if gain is None else abs_whole / gain.abs()


def _corrected(dots, packed, offsets, whole, gain, signed_gain, vectors_t, vmax, counts) -> torch.Tensor:
    """Run the correction kernel: [r, S, H] proximities from the dot products [H, r, S]."""
    n_heads, n_rows, n_sources = dots.shape
    abs_whole = whole.abs()
    key = _key(whole, gain, abs_whole)
    out = whole.new_empty(n_rows, n_sources, n_heads)
    with _numba_lock:
        _correct(
            dots.contiguous().numpy(),
            packed.contiguous().numpy(),
            offsets.to(torch.int64).numpy(),
            counts.to(torch.int64).numpy(),
            key.contiguous().numpy(),
            signed_gain.contiguous().numpy(),
            abs_whole.contiguous().numpy(),
            vectors_t.contiguous().numpy(),
            vmax.contiguous().numpy(),
            out.numpy(),
        )
    return out


def _correction_kernel(dots, packed, offsets, counts, key, signed_gain, abs_whole, vectors_t, vmax, out):  # pragma: no mutate block
    """out[k, j, h] = max(a * dots[h, k, j] - 2 * correction, 0) with a = packed[h, offsets[k] + j];
    0 for j >= counts[k] (the sources row k does not have).

    Per row, only coordinates whose key is below the row's largest ``a * vmax`` can ever count:
    only those are sorted, and each part walks them until its own ``a * vmax`` is reached. With
    vectors laid out [H, d, S], the parts of one head read each such coordinate in source order.
    """
    n_heads, n_rows, n_sources = dots.shape
    for k in numba.prange(n_rows):
        limit = min(counts[k], n_sources)
        start = offsets[k]
        reach = np.float32(0.0)
        for h in range(n_heads):
            for j in range(limit):
                reach = max(reach, packed[h, start + j] * vmax[h, j])
        candidates = np.nonzero(key[k] < reach)[0]
        coords = candidates[np.argsort(key[k][candidates])]
        keys = key[k][coords]
        for h in range(n_heads):
            for j in range(limit):
                a = packed[h, start + j]
                threshold = a * vmax[h, j]
                correction = np.float32(0.0)
                m = 0
                while m < len(coords) and keys[m] < threshold:
                    d = coords[m]
                    excess = a * signed_gain[k, d] * vectors_t[h, d, j] - abs_whole[k, d]
                    if excess > 0:
                        correction += excess
                    m += 1
                value = a * dots[h, k, j] - 2 * correction
                out[k, j, h] = value if value > 0 else 0.0
            for j in range(limit, n_sources):
                out[k, j, h] = 0.0


_correct = numba.njit(parallel=True, cache=True, nogil=True)(_correction_kernel)

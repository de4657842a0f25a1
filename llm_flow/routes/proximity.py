"""L1 proximities, the inner loop of the whole tool.

For a whole ``y`` and a part ``z`` the proximity is ``max(||y||_1 - ||y - z||_1, 0)``. Written per
coordinate, ``|y_d| - |y_d - z_d| = s_d z_d - 2 max(s_d z_d - |y_d|, 0)`` with ``s_d = sign(y_d)``
(``+1`` where ``y_d = 0``). Summed over ``d`` this splits the proximity into

* a *linear* term ``s . z``, which for attention parts ``z = a * g ⊙ vo`` is one matrix product
  for all sources and heads at once, and
* a *correction* ``2 Σ_d max(a s_d g_d vo_d - |y_d|, 0)`` that is non-zero only in coordinates where
  ``|y_d| / |g_d| < a |vo_d| <= a max|vo|``. Sorting each whole's coordinates by ``|y_d| / |g_d|``
  once lets the kernel visit exactly those coordinates and stop at the first that cannot count.

Both terms are exact, so the fast path gives the same numbers as the direct formula (and avoids
the cancellation of subtracting two large L1 norms in float32). Nothing is approximated: the
normalising sums downstream stay exact. ``method="torch"`` computes the direct per-coordinate
formula in chunks; it runs on any device and is the reference the fast path is tested against.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

try:
    import numba
except ImportError:  # the fast kernel is optional; plain torch always works
    numba = None

#: ``auto`` picks the numba kernel for CPU tensors when numba imports, else torch.
METHOD_ENV = "LLM_FLOW_KERNEL"
_CHUNK_ELEMENTS = 1 << 22  # elements of [rows, sources, heads, d_model] materialised at once (torch path)
_LINEAR_ELEMENTS = 1 << 24  # elements of [rows, sources, heads] per matrix-product block (numba path)
# Numba's default thread pool must not be entered by two Python threads at once (app sessions).
_numba_lock = threading.Lock()


def vector_proximity(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """Proximity of `part` to `whole` along the last axis (shapes broadcast): [...]."""
    whole, part = whole.float(), part.float()
    return (whole.abs() - (whole - part).abs()).sum(-1).clamp_min(0)


def head_proximities(
    whole: torch.Tensor,
    gain: torch.Tensor | None,
    head_vectors: torch.Tensor,
    weights: torch.Tensor,
    positions: torch.Tensor,
    method: str = "auto",
) -> torch.Tensor:
    """Proximities of every attention part ``z[i, j, h] = weights[i, h, j] * gain[i] ⊙ head_vectors[j, h]``.

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
    if method == "numba":
        return _heads_numba(whole, gain, head_vectors, weights, positions)
    return _heads_torch(whole, gain, head_vectors, weights, positions)


def numba_available() -> bool:
    return numba is not None


def _choose(method: str, tensor: torch.Tensor) -> str:
    method = os.environ.get(METHOD_ENV, method) if method == "auto" else method
    if method not in ("auto", "numba", "torch"):
        raise ValueError(f"unknown proximity method {method!r}: use 'auto', 'numba' or 'torch'")
    if method == "auto":
        return "numba" if numba is not None and tensor.device.type == "cpu" else "torch"
    if method == "numba" and (numba is None or tensor.device.type != "cpu"):
        raise ValueError("the numba kernel needs numba installed and tensors on the CPU")
    return method


def _heads_torch(whole, gain, head_vectors, weights, positions) -> torch.Tensor:
    """The direct formula, per coordinate, in memory-bounded chunks of sources."""
    n_rows, d_model = whole.shape
    n_sources, n_heads, _ = head_vectors.shape
    out = whole.new_zeros(n_rows, n_sources, n_heads)
    chunk = max(1, _CHUNK_ELEMENTS // (n_heads * d_model))
    for k in range(n_rows):
        stop = int(positions[k]) + 1
        y = whole[k]
        vectors_k = head_vectors if gain is None else head_vectors * gain[k]
        for start in range(0, stop, chunk):
            end = min(start + chunk, stop)
            parts = weights[k, :, start:end].T[:, :, None] * vectors_k[start:end]  # [c, H, d]
            out[k, start:end] = (y.abs() - (y - parts).abs()).sum(-1)
    return out.clamp_min_(0)


def _heads_numba(whole, gain, head_vectors, weights, positions) -> torch.Tensor:
    """Linear term by matrix product, exact correction by the sorted-coordinate kernel."""
    n_rows, d_model = whole.shape
    n_sources, n_heads, _ = head_vectors.shape
    sign = torch.where(whole >= 0, 1.0, -1.0)
    signed_gain = sign if gain is None else sign * gain  # [r, d]
    abs_whole = whole.abs()
    key = abs_whole if gain is None else abs_whole / gain.abs()  # inf where the gain is 0
    key_sorted, order = key.sort(dim=-1)
    vmax = head_vectors.abs().amax(-1)  # [S, H]
    flat_vectors = head_vectors.reshape(n_sources * n_heads, d_model)
    out = whole.new_empty(n_rows, n_sources, n_heads)
    block = max(1, _LINEAR_ELEMENTS // (n_sources * n_heads))
    for start in range(0, n_rows, block):
        rows = slice(start, min(start + block, n_rows))
        linear = (signed_gain[rows] @ flat_vectors.T).view(-1, n_sources, n_heads)
        linear.mul_(weights[rows].transpose(1, 2))  # a * (s ⊙ g) . vo
        with _numba_lock:
            _correct(
                linear.numpy(),
                key_sorted[rows].numpy(),
                order[rows].numpy(),
                signed_gain[rows].numpy(),
                abs_whole[rows].numpy(),
                head_vectors.numpy(),
                vmax.numpy(),
                weights[rows].numpy(),
                positions[rows].to(torch.int64).numpy(),
            )
        out[rows] = linear
    return out


def _correction_kernel(linear, key_sorted, order, signed_gain, abs_whole, vectors, vmax, weights, positions):
    """In place: linear[k, j, h] -> max(linear - 2 * correction, 0), and 0 for j > position."""
    n_rows, n_sources, n_heads = linear.shape
    d_model = key_sorted.shape[1]
    for k in numba.prange(n_rows):
        limit = positions[k]
        for j in range(n_sources):
            for h in range(n_heads):
                if j > limit:
                    linear[k, j, h] = 0.0
                    continue
                a = weights[k, h, j]
                threshold = a * vmax[j, h]
                correction = np.float32(0.0)
                m = 0
                while m < d_model and key_sorted[k, m] < threshold:
                    d = order[k, m]
                    excess = a * signed_gain[k, d] * vectors[j, h, d] - abs_whole[k, d]
                    if excess > 0:
                        correction += excess
                    m += 1
                value = linear[k, j, h] - 2 * correction
                linear[k, j, h] = value if value > 0 else 0.0


if numba is not None:
    _correct = numba.njit(parallel=True, cache=True, nogil=True)(_correction_kernel)

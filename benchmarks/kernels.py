"""Which L1-proximity kernel to use, by measurement: all attention proximities of one layer.

    python -m benchmarks.kernels                 # GPT-2-small shape, T = 1024, middle layer
    python -m benchmarks.kernels --tokens 256 --model smollm2-135m

Every method computes the same [T, T, H] proximities ``max(||y_i||_1 - ||y_i - z_ijh||_1, 0)`` for
the causal pairs of a real (random-weight) run. Speed is reported as G elements/s, elements being
causal pairs x heads x d_model: the work of the direct formula, so the rates compare directly.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from llm_flow.models.run import CausalPattern
from llm_flow.routes import proximity
from llm_flow.routes.proximity import AttentionLayer

ROW_BLOCK = 64  # query rows per call for the direct methods (bounded memory, causal per block)


def direct_torch(whole, layer, vectors, positions) -> torch.Tensor:
    """Plain torch, the library's reference path: per row, chunks of [sources, H, d]."""
    weights = layer.pattern.rows(positions, len(positions))
    return proximity.head_proximities(whole, None, vectors, weights, positions, method="torch")


def _direct_block(y: torch.Tensor, a: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """y [c, d], a [c, H, S], vectors [S, H, d] -> [c, S, H] (broadcast, then reduce)."""
    parts = a.transpose(1, 2)[..., None] * vectors[None]
    return (y.abs().sum(-1)[:, None, None] - (y[:, None, None, :] - parts).abs().sum(-1)).clamp_min(0)


_compiled_block = torch.compile(_direct_block, dynamic=True)


def direct_compiled(whole, layer, vectors, positions) -> torch.Tensor:
    """The direct formula through torch.compile (inductor fuses broadcast and reduction)."""
    n_tokens = len(positions)
    out = whole.new_zeros(n_tokens, n_tokens, layer.pattern.n_heads)
    for start in range(0, n_tokens, ROW_BLOCK):
        stop = min(start + ROW_BLOCK, n_tokens)
        a = layer.pattern.block(start, stop)
        out[start:stop, :stop] = _compiled_block(whole[start:stop], a, vectors[:stop])
    return out


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)  # fastmath: lets the d-loop vectorise
def _direct_kernel(whole, packed, vectors, out):
    n_tokens, d_model = whole.shape
    n_heads = packed.shape[0]
    for i in numba.prange(n_tokens):
        start = i * (i + 1) // 2
        norm = np.float32(0.0)
        for d in range(d_model):
            norm += abs(whole[i, d])
        for j in range(i + 1):
            for h in range(n_heads):
                a = packed[h, start + j]
                distance = np.float32(0.0)
                for d in range(d_model):
                    distance += abs(whole[i, d] - a * vectors[j, h, d])
                value = norm - distance
                out[i, j, h] = value if value > 0 else 0.0


def direct_numba(whole, layer, vectors, positions) -> torch.Tensor:
    """A direct L1 kernel: one fused loop over d per (i, j, h), nothing materialised."""
    n_tokens = len(positions)
    out = whole.new_zeros(n_tokens, n_tokens, layer.pattern.n_heads)
    packed = CausalPattern(layer.pattern.dense()).packed.float()  # the causal triangle the kernel walks
    _direct_kernel(whole.numpy(), packed.numpy(), vectors.numpy(), out.numpy())
    return out


def _in_row_blocks(whole, layer, positions, compute) -> torch.Tensor:
    """Fill [T, T, H] block by block of query rows with `compute(rows, n_sources)`."""
    out = whole.new_zeros(len(positions), len(positions), layer.pattern.n_heads)
    for start in range(0, len(positions), 4 * ROW_BLOCK):
        rows = positions[start : start + 4 * ROW_BLOCK]
        stop = int(rows[-1]) + 1
        out[start : start + len(rows), :stop] = compute(rows, stop)
    return out


def gemm_correction(whole, layer, vectors, positions) -> torch.Tensor:
    """Our kernel fed with a d_model-sized GEMM for the linear term (the previous fast path)."""
    return _in_row_blocks(whole, layer, positions, lambda rows, stop: proximity.head_proximities(
        whole[rows], None, vectors[:stop], layer.pattern.rows(rows, stop), rows, method="numba"
    ))  # fmt: skip


def factored_correction(whole, layer, vectors, positions) -> torch.Tensor:
    """Ours: the linear term through the d_head-sized factorisation, then the correction."""
    return _in_row_blocks(whole, layer, positions, lambda rows, stop: proximity.attention_proximities(
        whole[rows], None, layer, rows, method="numba"
    ))  # fmt: skip


METHODS: dict[str, Callable] = {
    "torch, direct, chunked (reference path)": direct_torch,
    "torch.compile, direct": direct_compiled,
    "numba, direct L1": direct_numba,
    "numba, d_model GEMM + correction": gemm_correction,
    "numba, factored d_head GEMM + correction (ours)": factored_correction,
}


def time_method(method: Callable, args: tuple, repeat: int) -> tuple[float, torch.Tensor]:
    method(*args)  # compile / warm up
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = method(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def layer_case(shape: str, n_tokens: int, layer_index: int | None) -> tuple[tuple, int, str]:
    """One layer of a real run: the methods' arguments, the element count, and a description."""
    from benchmarks import models

    model = models.load(shape)
    run = model.run(models.prompt(n_tokens, model.info.vocab_size))
    layer_index = run.n_layers // 2 if layer_index is None else layer_index
    act = run.layer(layer_index)
    layer = AttentionLayer.build(act.values, model.attention_output_weight(layer_index), act.pattern)
    whole = act.resid_mid.float().contiguous()
    vectors = layer.vectors.contiguous()  # [T, H, d] for the methods that take plain vectors
    elements = run.n_tokens * (run.n_tokens + 1) // 2 * layer.pattern.n_heads * whole.shape[1]
    description = (
        f"{shape} shape, T = {run.n_tokens}, layer {layer_index}, torch threads {torch.get_num_threads()}, "
        f"numba threads {numba.get_num_threads()}; {elements / 1e9:.2f} G elements (causal pairs x heads x d_model)"
    )
    return (whole, layer, vectors, torch.arange(run.n_tokens)), elements, description


def main(argv: list[str] | None = None) -> None:
    from benchmarks.models import SHAPES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=SHAPES, default="gpt2-small")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layer", type=int, help="default: the middle layer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="method names to leave out (substring)")
    args = parser.parse_args(argv)

    method_args, elements, description = layer_case(args.model, args.tokens, args.layer)
    print(description)
    reference = None
    for name, method in METHODS.items():
        if any(s in name for s in args.skip):
            continue
        seconds, result = time_method(method, method_args, args.repeat)
        reference = result if reference is None else reference
        error = float((result - reference).abs().max())
        print(f"  {name:<50} {seconds:8.3f} s  {elements / seconds / 1e9:7.2f} G elements/s  "
              f"max |diff| vs first {error:.1e}")


if __name__ == "__main__":
    main()

"""How much memory a run takes, predicted from the model's shape before the forward pass.

A `Run` keeps, per layer, a few residual-stream tensors, the values, the FFN activations and
the queries and keys that rebuild its attention rows (or, for attention that cannot be rebuilt
exactly, the causal half of every pattern); all of it is a function of the model's dimensions
and the prompt length. The forward pass needs more while it runs: one FFN's intermediates, the
freed intermediates the C allocator keeps until the pass ends, and with stored patterns a layer's
full attention scores. Knowing both lets
`model.run` refuse a prompt that would not fit, with a message that says what to change,
instead of letting the process die; the app's caches use `Run.nbytes` to stay within a budget.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from llm_flow.errors import MemoryLimitError
from llm_flow.models.base import ModelInfo

_ITEM_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
#: Full [heads, T, T] attention tensors counted as alive on top of the run while a layer runs.
#: Measured (benchmarks/run_memory.py and the T = 4096 runs of benchmarks/routes.py) the excess
#: is about one; two keeps the estimate on the safe side.
_LIVE_SCORE_TENSORS = 2
#: [T, d_mlp] intermediates a feed-forward block holds at once, beside what the run keeps: the
#: largest set alive at any moment of the pass (attention's are a few [T, d_model]). GPT-2's tanh
#: GELU is elementwise arithmetic, so the input projection's output and up to three partial
#: results live together: 3.5 [T, d_mlp] above the run at T = 256, 1,024 and 4,096 (torch
#: profiler, net of the block's two outputs not yet made); a gated FFN (SwiGLU) holds 1.7.
_FFN_INTERMEDIATES = 4
#: With fast attention, freed intermediates the C allocator still holds when the pass ends (its
#: RSS peak), as a share of the run's bytes that glibc serves from its heap: a tensor above its
#: largest mmap threshold (32 MiB) is mapped on its own and unmapped when freed, so only smaller
#: ones leave holes between the kept tensors. Measured as RSS peak minus the peak of live tensors
#: (benchmarks/run_memory.py): 0.46 of the heap part on SmolLM2's shape at T = 256, 1,024 and
#: 4,096; on GPT-2's it moves between processes and runs (0.2-0.8 at T = 1,024), see the README.
_HEAP_RETAINED = 0.45
_MMAP_THRESHOLD_MAX = 32 << 20
#: Gemma 2's soft-capped layers are attended from the kept rows in chunks of 2^24 scores,
#: float32 and model dtype at once (llm_flow/models/query_keys.py).
_SOFTCAP_CHUNK_BYTES = 3 * 4 * (1 << 24)
_CPU_ALLOCATION_FAILURE = ("can't allocate memory", "not enough memory")


def estimate_run_bytes(info: ModelInfo, n_tokens: int) -> int:
    """Bytes a `Run` of `n_tokens` tokens holds right after ``model.run`` (see `Run.nbytes`).

    Per layer: resid_post, mlp_out (and resid_mid for sequential blocks) [T, d_model], and the first
    layer's resid_pre (every other layer's is the previous layer's resid_post, kept once);
    values [T, n_kv_heads, d_head]; FFN activations [T, d_mlp]; and what gives the attention
    rows: the queries and keys [T, H + n_kv_heads, d_head] (`ModelInfo.recomputed_rows`), or else
    the causal triangle of the pattern [H, T (T + 1) / 2] (an encoder's whole [H, T, T]); all in
    the model's dtype. Post-norm and post-LN models add two float32 gains [T, d_model]. Then the
    token ids (no logits: `Run.position_logits` computes them when asked).
    """
    return sum(_run_tensors(info, n_tokens))


def estimate_peak_bytes(info: ModelInfo, n_tokens: int) -> int:
    """The run plus what the forward pass needs on top while it runs. With fast attention: one
    FFN's intermediates, the blocks' freed intermediates the allocator still holds, a layer's
    soft-capped scores computed in chunks (Gemma 2), the float32 logits of the last token. With
    stored patterns: a layer's full attention scores, alive twice."""
    run = estimate_run_bytes(info, n_tokens)
    if info.recomputed_rows:
        transient = ffn_intermediates_bytes(info, n_tokens) + heap_retained_bytes(info, n_tokens)
        transient += _SOFTCAP_CHUNK_BYTES * info.post_norms
    else:
        transient = _LIVE_SCORE_TENSORS * info.n_heads * n_tokens * n_tokens * _item_bytes(info)
    return run + transient + 4 * info.vocab_size


def ffn_intermediates_bytes(info: ModelInfo, n_tokens: int) -> int:
    """The largest set of tensors alive at once in a block beside the run: an FFN's intermediates
    (`_FFN_INTERMEDIATES`)."""
    return _FFN_INTERMEDIATES * n_tokens * info.d_mlp * _item_bytes(info)


def heap_retained_bytes(info: ModelInfo, n_tokens: int) -> int:
    """Freed memory the C allocator still holds at the end of a fast-attention pass: a share of
    the run's tensors small enough to come from its heap (`_HEAP_RETAINED`)."""
    heap = sum(size for size in _run_tensors(info, n_tokens) if size <= _MMAP_THRESHOLD_MAX)
    return int(_HEAP_RETAINED * heap)


def _run_tensors(info: ModelInfo, n_tokens: int) -> list[int]:
    """The size of every tensor a run of `n_tokens` keeps (see `estimate_run_bytes`): their sum
    is the run; their sizes say which the C allocator maps on their own."""
    item = _item_bytes(info)
    t = n_tokens
    residuals = 2 if info.parallel_blocks else 3  # a block's input is the previous one's output, kept once
    if info.recomputed_rows:
        rows = [t * info.n_heads * info.d_head * item, t * info.n_kv_heads * info.d_head * item]  # queries, keys
    else:
        rows = [item * info.n_heads * (t * t if info.bidirectional else t * (t + 1) // 2)]
    values = t * info.n_kv_heads * info.d_head * item
    layer = [*[t * info.d_model * item] * residuals, values, t * info.d_mlp * item, *rows]
    if info.post_norms or info.post_ln:
        layer += [4 * t * info.d_model] * 2
    return layer * info.n_layers + [t * info.d_model * item, 8 * t]


def fitting_tokens(info: ModelInfo, budget: int) -> int:
    """The longest prompt whose estimated peak fits in `budget` bytes (0 if none)."""
    low, high = 0, max(1, info.n_ctx)
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_peak_bytes(info, middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def check_run_fits(info: ModelInfo, n_tokens: int, limit: int | None) -> None:
    """Refuse, before the forward pass, a run whose estimated peak exceeds `limit` bytes (by
    default the memory available on the model's device right now)."""
    needed = estimate_peak_bytes(info, n_tokens)
    available = available_bytes(info.device) if limit is None else limit
    if needed <= available:
        return
    fits = fitting_tokens(info, available)
    shorter = f"a prompt of at most ~{fits} tokens" if fits else "a much shorter prompt"
    if limit is None:
        room, remedy = f"only {format_bytes(available)} is available on {info.device}", "free memory"
    else:
        room = f"the configured limit (limits.run_memory_mb) is {format_bytes(limit)}"
        remedy = "raise limits.run_memory_mb in the config"
    raise MemoryLimitError(
        f"analysing {n_tokens} tokens with {info.name} needs about {format_bytes(needed)} "
        f"({format_bytes(estimate_run_bytes(info, n_tokens))} kept for the analysis), but {room}: "
        f"use {shorter}, a smaller model, or {remedy}"
    )


@contextmanager
def out_of_memory_as_error(info: ModelInfo, n_tokens: int) -> Iterator[None]:
    """Turn an allocation failure inside the block into a `MemoryLimitError` that says what to do.

    CUDA raises ``torch.OutOfMemoryError``, Python ``MemoryError``; PyTorch's CPU allocator raises
    a plain ``RuntimeError`` that only its message identifies.
    """
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        cause = _cause(exc)
    except RuntimeError as exc:
        if not any(marker in str(exc) for marker in _CPU_ALLOCATION_FAILURE):
            raise
        cause = _cause(exc)
    else:
        return
    # The failed exception is gone here, and with it the frames holding the partial activations.
    gc.collect()
    if info.device.startswith("cuda"):
        torch.cuda.empty_cache()
    raise MemoryLimitError(
        f"out of memory while analysing {n_tokens} tokens with {info.name} on {info.device} "
        f"(estimated need {format_bytes(estimate_peak_bytes(info, n_tokens))}; {cause}): use a "
        "shorter prompt or a smaller model, or free memory (close other analyses or programs)"
    )


def available_bytes(device: str) -> int:
    """Memory that a new allocation on `device` can use now: free GPU memory for CUDA; for the
    CPU, ``MemAvailable`` bounded by the container's cgroup limit when there is one."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    candidates = [_meminfo_available(), _cgroup_headroom()]
    known = [value for value in candidates if value is not None]
    return min(known) if known else total_memory_bytes()


def total_memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``300 bytes``."""
    if abs(n) < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def _cause(exc: BaseException) -> str:
    """What failed, briefly: the allocation size when the allocator says it."""
    text = str(exc).strip() or type(exc).__name__
    size = re.search(r"allocate ([\d.]+) (bytes|[KMG]i?B)", text)
    if size and size.group(2) == "bytes":
        return f"an allocation of {format_bytes(int(size.group(1)))} failed"
    if size:
        return f"an allocation of {size.group(1)} {size.group(2)} failed"
    return text.splitlines()[0][:200]


def _item_bytes(info: ModelInfo) -> int:
    return _ITEM_BYTES.get(info.dtype, 4)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """limit - usage of this process's memory cgroup (v2, then v1); None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # "no limit"
            return None
        return max(0, int(limit) - usage)
    return None

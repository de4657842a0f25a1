"""How much memory a run takes, predicted from the model's shape before the forward pass.

A `Run` keeps, per layer, a few residual-stream tensors, the values, the FFN activations and
the queries and keys that rebuild its attention rows (or, for attention that cannot be rebuilt
exactly, the causal half of every pattern); all of it is a function of the model's dimensions
and the prompt length. The forward pass needs a little more while it runs (one block's
intermediates; with stored patterns a layer's full attention scores). Knowing both lets
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
#: With fast attention, what the pass adds on top of the run it keeps, as a share of it: each
#: block's freed intermediates leave holes between the kept tensors that the C allocator does not
#: hand back during the pass. Tensors over glibc's largest mmap threshold (32 MiB) are mapped on
#: their own and returned when freed, so a [T, d_model] above it leaves about half as much
#: (measured with benchmarks/routes.py on SmolLM2's shape: 0.36 of the run at T = 1,024 and
#: 4,096, 0.17 at 16,384; GPT-2's shape leaves more in that process, see the README).
_PASS_OVERHEAD = 0.35
_PASS_OVERHEAD_MAPPED = 0.17
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
    item = _item_bytes(info)
    t = n_tokens
    residuals = 2 if info.parallel_blocks else 3  # a block's input is the previous one's output, kept once
    if info.recomputed_rows:
        rows = t * (info.n_heads + info.n_kv_heads) * info.d_head
    else:
        rows = info.n_heads * (t * t if info.bidirectional else t * (t + 1) // 2)
    per_layer = item * (residuals * t * info.d_model + t * info.n_kv_heads * info.d_head + t * info.d_mlp + rows)
    if info.post_norms or info.post_ln:
        per_layer += 2 * 4 * t * info.d_model
    return info.n_layers * per_layer + item * t * info.d_model + 8 * t


def estimate_peak_bytes(info: ModelInfo, n_tokens: int) -> int:
    """The run plus what the forward pass needs on top while it runs. With fast attention: the
    blocks' freed intermediates the allocator still holds (`_PASS_OVERHEAD`), a layer's
    soft-capped scores computed in chunks (Gemma 2), the float32 logits of the last token. With
    stored patterns: a layer's full attention scores, alive twice."""
    item = _item_bytes(info)
    run = estimate_run_bytes(info, n_tokens)
    if info.recomputed_rows:
        mapped = n_tokens * info.d_model * item > _MMAP_THRESHOLD_MAX
        transient = int((_PASS_OVERHEAD_MAPPED if mapped else _PASS_OVERHEAD) * run) + _SOFTCAP_CHUNK_BYTES * info.post_norms
    else:
        transient = _LIVE_SCORE_TENSORS * info.n_heads * n_tokens * n_tokens * item
    return run + transient + 4 * info.vocab_size


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

"""How well the memory estimates predict a real run (random models of real shapes, CPU).

    python -m benchmarks.run_memory            # GPT-2-small and SmolLM2-135M shapes, T = 256 .. 2048
    python -m benchmarks.run_memory --quick    # T = 128 and 512

For each prompt length: `Run.nbytes` against `estimate_run_bytes` (what a run keeps), and the
forward pass's peak RSS increase against `estimate_peak_bytes` (what `model.run` compares with
the memory available before it starts). The peak estimate should not be below the measured peak
by much, or the refusal would let through runs that do not fit.

The peak is then taken apart with a second, profiled pass (`memory.live_tensors`): the tensors
alive at the pass's highest point beyond the run (the FFN's intermediates, estimated by
`_FFN_INTERMEDIATES`), and the rest of the RSS peak, freed memory the C allocator still holds
(estimated by `_HEAP_RETAINED` of the run's heap-allocated tensors).
"""

from __future__ import annotations

import argparse
import gc

from benchmarks import memory, models
from llm_flow.models.memory import (
    estimate_peak_bytes,
    estimate_run_bytes,
    ffn_intermediates_bytes,
    heap_retained_bytes,
)

FULL_LENGTHS = (256, 1024, 2048)
QUICK_LENGTHS = (128, 512)
MIB = 1 << 20


def measure_case(model, n_tokens: int) -> dict:
    prompt = models.prompt(n_tokens, model.info.vocab_size)
    forward = memory.measure(lambda: model.run(prompt))
    run = forward.result
    assert run.n_tokens == n_tokens
    nbytes = run.nbytes
    del run
    forward.result = None
    memory.release_freed_memory()
    live = memory.live_tensors(lambda: model.run(prompt))
    live.result = None
    row = {
        "T": n_tokens,
        "run_mib": nbytes / MIB,
        "estimate_run_mib": estimate_run_bytes(model.info, n_tokens) / MIB,
        "transient_mib": (live.peak_bytes - live.end_bytes) / MIB,
        "estimate_ffn_mib": ffn_intermediates_bytes(model.info, n_tokens) / MIB,
        "retained_mib": (forward.peak_bytes - live.peak_bytes) / MIB,
        "estimate_retained_mib": heap_retained_bytes(model.info, n_tokens) / MIB,
        "peak_mib": forward.peak_bytes / MIB,
        "estimate_peak_mib": estimate_peak_bytes(model.info, n_tokens) / MIB,
        "seconds": forward.seconds,
    }
    del live, forward
    gc.collect()
    return row


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | T | Run.nbytes | estimate | live tensors above the run | FFN estimate "
        "| allocator held | its estimate | forward peak (RSS) | peak estimate | estimate / peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['T']} | {r['run_mib']:.1f} MiB | {r['estimate_run_mib']:.1f} MiB | "
            f"{r['transient_mib']:.1f} MiB | {r['estimate_ffn_mib']:.1f} MiB | {r['retained_mib']:.0f} MiB | "
            f"{r['estimate_retained_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB | {r['estimate_peak_mib']:.0f} MiB | "
            f"{r['estimate_peak_mib'] / max(r['peak_mib'], 1e-9):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 128 and 512 only")
    parser.add_argument("--models", nargs="+", choices=(*models.SHAPES, models.LLAMA_1B), default=list(models.SHAPES),
                        help=f"{models.LLAMA_1B}: bfloat16, about 2.3 GiB of weights (not run by default)")  # fmt: skip
    parser.add_argument("--lengths", nargs="+", type=int, help="prompt lengths (overrides --quick)")
    args = parser.parse_args(argv)
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    rows = []
    for shape in args.models:
        model = models.load(shape)
        model.run(models.prompt(16, model.info.vocab_size))  # warm-up: thread pools, lazy buffers
        rows += [{"model": shape} | measure_case(model, n) for n in lengths]
        del model
        gc.collect()
    print(format_table(rows))
    print(f"\nPeak: {memory.DESCRIPTION}.")
    print(
        "Live tensors: peak minus end of the tensors a second, profiled model.run allocates (torch "
        "profiler); allocator held: RSS peak minus that live peak."
    )


if __name__ == "__main__":
    main()

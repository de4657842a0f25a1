"""Benchmark: seconds and peak memory of every attribution method on SmolLM2-135M, for prompts
of 64, 256 and 1,000 tokens and 5 generated tokens (5 attribution steps).

    python -m benchmarks.attribution            # T = 64, 256, 1000 (the 1,000-token row takes long)
    python -m benchmarks.attribution --quick    # T = 64 and 256
    python -m benchmarks.attribution --threads 1  # torch threads (1 is faster on a busy machine)

Each (T, method) case runs in a fresh child process, so its peak memory is its own. The prompt is
a fixed English text cut to exactly T tokens; the 5-token continuation is generated greedily
once per case (timed on its own row). Occlusion at T >= 1,000 occludes windows of 50 tokens
(window 1 would be 1,000 forward passes per step). Writes the table as JSON into
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import memory

RESULTS = Path(__file__).resolve().parent / "results"
FULL_LENGTHS = (64, 256, 1000)
QUICK_LENGTHS = (64, 256)
N_GENERATED = 5
LONG_OCCLUSION_WINDOW = 50
MIB = 2**20
TEXT = (
    "The river rose slowly through the night, and by morning the old bridge was gone. People "
    "from the village gathered on the bank to watch the water carry branches, fences and a red "
    "boat downstream. Nobody spoke much. The baker said that his grandfather had seen the same "
    "thing seventy years before, and that the bridge had been rebuilt within a summer. "
)


def case(n_tokens: int, method: str) -> dict:
    """One method on a T-token prompt plus 5 generated tokens, in this (fresh) process."""
    import llm_flow
    from llm_flow.attribution import Sequence, attribute_sequence
    from llm_flow.attribution.targets import greedy

    model = llm_flow.load_model("smollm2-135m", max_prompt_tokens=4096)
    ids = model.encode(TEXT * (1 + n_tokens // 60))[:n_tokens]
    assert len(ids) == n_tokens
    generation = memory.measure(lambda: greedy(model, ids, N_GENERATED))
    sequence = Sequence(tuple(ids + generation.result), n_tokens, prompt="", generated=True)
    options = {"window": LONG_OCCLUSION_WINDOW} if method == "occlusion" and n_tokens >= 1000 else {}
    measured = memory.measure(lambda: attribute_sequence(model, sequence, method, **options))
    result = measured.result
    deltas = result.deltas or []
    return {
        "tokens": n_tokens, "method": method, "options": options, "steps": result.n_steps,
        "seconds": measured.seconds, "peak_mib": measured.peak_bytes / MIB,
        "generation_seconds": generation.seconds,
        "max_abs_delta": max((abs(d) for d in deltas), default=None),
    }  # fmt: skip


def run_case(n_tokens: int, method: str, threads: int | None) -> dict:
    command = [sys.executable, "-m", "benchmarks.attribution", "--case", str(n_tokens), method]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    line = next((l for l in done.stdout.splitlines() if l.startswith("CASE ")), None)
    if done.returncode != 0 or line is None:
        return {"tokens": n_tokens, "method": method, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(line.removeprefix("CASE "))


def table(rows: list[dict], lengths: tuple[int, ...]) -> str:
    by = {(r["tokens"], r["method"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = "| method | " + " | ".join(f"T = {n:,}" for n in lengths) + " |"
    lines = [head, "|---|" + "---:|" * len(lengths)]
    generation = [by.get((n, methods[0]), {}).get("generation_seconds") for n in lengths]
    lines.append("| greedy generation of 5 tokens | " + " | ".join(f"{g:.2f} s" if g else "–" for g in generation) + " |")
    for method in methods:
        cells = []
        for n in lengths:
            r = by.get((n, method), {})
            if "error" in r:
                cells.append(f"failed: {r['error'][:40]}")
            elif r:
                note = f" (window {r['options']['window']})" if r.get("options") else ""
                cells.append(f"{r['seconds']:.1f} s, {r['peak_mib']:.0f} MiB{note}")
            else:
                cells.append("–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T = 64 and 256 only")
    parser.add_argument("--threads", type=int, help="torch threads per case (default: torch's choice)")
    parser.add_argument("--case", nargs=2, metavar=("T", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case:
        print("CASE " + json.dumps(case(int(args.case[0]), args.case[1])), flush=True)
        return 0
    from llm_flow.attribution import METHODS

    lengths = QUICK_LENGTHS if args.quick else FULL_LENGTHS
    rows = []
    for n_tokens in lengths:
        for method in METHODS:
            rows.append(run_case(n_tokens, method, args.threads))
            r = rows[-1]
            print(f"T={n_tokens:<5} {method:<22} " + (f"{r['seconds']:.1f} s, {r['peak_mib']:.0f} MiB"
                  if "error" not in r else f"failed: {r['error']}"), file=sys.stderr, flush=True)  # fmt: skip
    threads = args.threads or "default"
    print(f"SmolLM2-135M, float32, {os.cpu_count()} CPU cores, torch threads: {threads}; {N_GENERATED} generated tokens = "
          f"{N_GENERATED} attribution steps; default options; {memory.DESCRIPTION}\n")  # fmt: skip
    print(table(rows, lengths))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attribution.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

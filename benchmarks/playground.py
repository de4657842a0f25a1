"""Benchmark: what the playground page costs, on the SmolLM2-135M shape (random weights).

    python -m benchmarks.playground           # prompts of 64 and 256 tokens, 32 generated tokens
    python -m benchmarks.playground --quick   # 64 tokens, 8 generated tokens

Rows: one slider move (sampling stages over the 49,152-token vocabulary and the stage figure, no
forward pass); the anatomy of the last position on a fresh Run (contributions of one row per
layer, the logit lens of every layer); generating N tokens with the KV cache; and the Step path,
where each token means a new Run of the longer text (what the app analyses after every step).
Times are the best of `--repeat` trials.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from benchmarks import models
from llm_flow.figures.playground import anatomy_figure, sampling_figure
from llm_flow.views.anatomy import anatomy
from llm_flow.views.generation import generate, step
from llm_flow.views.sampling import SamplingSettings, sampling_stages, seeded_generator

SETTINGS = SamplingSettings(temperature=0.8, top_k=50, top_p=0.95)


def best_time(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model, n_tokens: int, n_new: int, repeat: int) -> list[tuple[str, float, str]]:
    prompt = models.prompt(n_tokens, model.info.vocab_size)
    run = model.run(prompt)
    decode = model.decode_tokens
    slider = best_time(lambda: sampling_figure(sampling_stages(run.logits[-1], SETTINGS), decode), repeat)

    forward = best_time(lambda: model.run(prompt), repeat)
    fresh_runs = [model.run(prompt) for _ in range(repeat)]  # no contribution rows computed yet
    on_fresh_run = best_time(lambda: anatomy_figure(anatomy(fresh_runs.pop(), -1)), repeat)
    kv = best_time(lambda: generate(model, prompt, n_new, SETTINGS, seeded_generator(0)), repeat)

    def stepping() -> None:
        current = run
        for _ in range(n_new):
            current = model.run(step(current, SETTINGS, seeded_generator(0))[1].text)

    steps = best_time(stepping, 1)
    return [
        ("slider move: stages + figure", slider * 1e3, "ms"),
        ("forward pass (model.run)", forward, "s"),
        ("anatomy + figure, on a Run not yet analysed", on_fresh_run, "s"),
        (f"generate {n_new} tokens, KV cache", n_new / kv, "tokens/s"),
        (f"step {n_new} times, a new Run each", n_new / steps, "tokens/s"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64-token prompt, 8 generated tokens")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    lengths, n_new = ((64,), 8) if args.quick else ((64, 256), 32)
    model = models.load("smollm2-135m")
    print(f"SmolLM2-135M shape, random weights; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'T':>5}  {'measure':<48} {'value':>10}  unit")
    for n_tokens in lengths:
        for name, value, unit in measure(model, n_tokens, n_new, args.repeat):
            print(f"{n_tokens:>5}  {name:<48} {value:>10.3f}  {unit}")


if __name__ == "__main__":
    main()

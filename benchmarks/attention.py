"""Benchmark: server time and figure size of the attention views on SmolLM2-135M.

    python -m benchmarks.attention            # T = 256 and 1000, best of 3
    python -m benchmarks.attention --quick    # T = 256, one trial

Server time is what the app spends per view after the prompt has been run once: the view's data
from the Run, the plotly figure, and its JSON (what Streamlit sends); it is also given as a
fraction of the forward pass (``model.run``) measured in the same process, which says more than
seconds on a shared machine. Memos are cleared before each trial, so ALTI rows and the neuron
view's queries and keys (block l alone on the Run's ``resid_pre``, checked over the whole layer)
are paid every time ("cold"); the neuron view is also timed "warm" (another head of a layer
already captured). Size is ``len(fig.to_json())``. Targets at 1,000 tokens: under 2 s and under 5 MB per view.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

TARGET_SECONDS = 2.0
TARGET_BYTES = 5_000_000
TEXT = Path(__file__).resolve().parent.parent / "README.md"


def prompt_of(model, n_tokens: int) -> str:
    """Text that the model's tokenizer turns into exactly `n_tokens` tokens (README prose)."""
    text = TEXT.read_text()
    ids = model.tokenizer(text * (1 + 4 * n_tokens // len(text)), add_special_tokens=False)["input_ids"]
    for cut in range(n_tokens, 0, -1):
        candidate = model.tokenizer.decode(ids[:cut])
        if len(model.encode(candidate)) <= n_tokens:
            return candidate
    raise RuntimeError("could not build the prompt")


def cases(run) -> dict[str, Callable]:
    """One callable per view configuration, each returning a plotly figure."""
    from llm_flow.figures.attention import head_view_figure, model_view_figure, neuron_view_figure
    from llm_flow.views.attention import head_view, model_view, token_window
    from llm_flow.views.attention_scores import neuron_view

    layer = run.n_layers // 2
    out = {}
    for weighting in ("attention", "norm", "alti"):
        out[f"head, all tokens, top-3, {weighting}"] = lambda w=weighting: head_view_figure(
            head_view(run, layer, weighting=w, top_k=3)
        )
        out[f"head, 64-token window, {weighting}"] = lambda w=weighting: head_view_figure(
            head_view(run, layer, weighting=w, window=token_window(run, -1, 64))
        )
        out[f"model, 30x9, 32-token window, {weighting}"] = lambda w=weighting: model_view_figure(
            model_view(run, weighting=w, window=token_window(run, -1, 32))
        )
    out["neuron, deepest layer, cold"] = lambda: neuron_view_figure(neuron_view(run, run.n_layers - 1, 0, -1))
    out["neuron, 64-token window, warm"] = lambda: neuron_view_figure(
        neuron_view(run, run.n_layers - 1, 1, -1, window=token_window(run, -1, 64))
    )
    return out


def measure(run, name: str, build: Callable, trials: int) -> tuple[float, int]:
    """Best time over `trials` (the Run's derived results cleared unless the case is warm) and the JSON size."""
    best, size = float("inf"), 0
    for _ in range(trials):
        if "warm" not in name:
            run.derived_store.clear()
        start = time.perf_counter()
        size = len(build().to_json())
        best = min(best, time.perf_counter() - start)
    return best, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 256 only, one trial")
    args = parser.parse_args(argv)
    import llm_flow

    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)

    model = llm_flow.load_model("smollm2-135m")
    lengths, trials = ((256,), 1) if args.quick else ((256, 1000), 3)
    rows = []
    for n_tokens in lengths:
        start = time.perf_counter()
        run = model.run(prompt_of(model, n_tokens))
        forward = time.perf_counter() - start
        print(f"T = {run.n_tokens}: forward pass (model.run, once) {forward:.2f} s", flush=True)
        for name, build in cases(run).items():
            seconds, size = measure(run, name, build, trials)
            rows.append((run.n_tokens, name, seconds, size, seconds / forward))
            print(f"  {name}: {seconds:.3f} s, {size / 1e6:.2f} MB", flush=True)
    print("\n| T | view | server time | vs forward pass | figure size |\n|---:|---|---:|---:|---:|")
    for n_tokens, name, seconds, size, ratio in rows:
        print(f"| {n_tokens} | {name} | {seconds:.2f} s | {ratio:.2f}× | {size / 1e6:.2f} MB |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    long = [r for r in rows if r[0] >= 1000]
    misses = [r for r in long if r[2] >= TARGET_SECONDS or r[3] >= TARGET_BYTES]
    if long:
        verdict = "all met" if not misses else "missed by: " + "; ".join(r[1] for r in misses)
        print(f"\nTargets at 1,000 tokens (< {TARGET_SECONDS:g} s, < {TARGET_BYTES / 1e6:g} MB per view): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

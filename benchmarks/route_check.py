"""Benchmark: route checks on SmolLM2-135M: what they find on confident prompts, and what they cost.

    python -m benchmarks.route_check            # 6 prompts x 20 draws; cost at T = 64 and 512
    python -m benchmarks.route_check --quick    # 3 prompts x 5 draws; cost at T = 64

Two tables. *Findings*: for prompts where the model is confident, the target token's probability
unmodified, with the route only and with the route removed (threshold 0.04, renormalised), against
random parts of the same size, and where the route falls among the random draws. *Cost*: one
check at T tokens: forward passes per draw, seconds per pass, the whole check, and the threshold
curve. Needs the converted SmolLM2 (`llm_flow.load_model("smollm2-135m")`).
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPTS = (
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "When Mary and John went to the store, John gave a drink to",
    "Water freezes at zero degrees",
    "The first president of the United States was George",
    "The opposite of hot is",
)
TEXT = (
    "The history of the city goes back to a small settlement on the river, where traders met to exchange "
    "salt, wool and grain. Over the centuries the town grew around its market square, a cathedral was "
    "built on the hill, and the old wooden bridge was replaced by one of stone. "
)
THRESHOLD = 0.04


def findings(model, prompts: tuple[str, ...], draws: int) -> list[dict]:
    import llm_flow
    from llm_flow.interventions import check_route

    rows = []
    for prompt in prompts:
        run = model.run(prompt)
        check = check_route(run, llm_flow.build_graph(run, -1, THRESHOLD), draws=draws, seed=0)
        rows.append({
            "prompt": prompt, "token": check.token, "T": run.n_tokens, "parts": check.n_route_parts,
            "unmodified": check.unmodified.probability,
            "route only": check.route_only.probability,
            "random only": statistics.median(o.probability for o in check.random_only),
            "only pct": check.only_percentile,
            "route removed": check.route_removed.probability,
            "random removed": statistics.median(o.probability for o in check.random_removed),
            "removed pct": check.removed_percentile,
        })  # fmt: skip
    return rows


def cost(model, n_tokens: int, draws: int) -> dict:
    import llm_flow
    from llm_flow.interventions import ablated_logits, check_route, threshold_curve
    from llm_flow.interventions.route import dropped_parts, route_nodes

    run, seconds_run = _timed(lambda: model.run(_prompt(model, n_tokens)))
    graph, seconds_graph = _timed(lambda: llm_flow.build_graph(run, -1, THRESHOLD))
    only = dropped_parts(run, route_nodes(run, graph), "zero")
    _, seconds_pass = _timed(lambda: ablated_logits(run, only))
    check, seconds_check = _timed(lambda: check_route(run, graph, draws=draws, seed=0))
    curve, seconds_curve = _timed(lambda: threshold_curve(run, graph))
    passes = 2 + 2 * draws
    return {
        "T": run.n_tokens, "edges": graph.number_of_edges(), "route parts": check.n_route_parts,
        "dropped parts": check.n_dropped_parts, "forward (run)": seconds_run, "route": seconds_graph,
        "one ablated pass": seconds_pass, "draws": draws, "passes": passes, "passes per draw": 2,
        "check": seconds_check, "per pass": seconds_check / passes, f"curve ({len(curve)} thresholds)": seconds_curve,
    }  # fmt: skip


def _prompt(model, n_tokens: int) -> str:
    """Real text, cut to at most `n_tokens` tokens (BOS included if the model adds one)."""
    words = (TEXT * (1 + 2 * n_tokens // len(TEXT.split()))).split()
    low, high = 1, len(words)
    while low < high:  # the longest prefix of words that fits
        middle = (low + high + 1) // 2
        if len(model.encode(" ".join(words[:middle]))) <= n_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def _timed(work):
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def _table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value < 1e-2 or value >= 100 else f"{value:.3f}".rstrip("0").rstrip(".")
    return repr(value) if isinstance(value, str) and value.startswith(" ") else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 prompts x 5 draws; cost at T = 64 only")
    args = parser.parse_args()
    import torch

    import llm_flow

    model = llm_flow.load_model("smollm2-135m")
    prompts, draws = (PROMPTS[:3], 5) if args.quick else (PROMPTS, 20)
    print(f"SmolLM2-135M, threshold {THRESHOLD}, renormalised; {draws} random draws of each baseline, seed 0; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")  # fmt: skip
    print("Findings: p(target token)\n")
    print(_table(findings(model, prompts, draws)))
    print("\nCost of one check (seconds)\n")
    print(_table([cost(model, n, draws) for n in ((64,) if args.quick else (64, 512))]))


if __name__ == "__main__":
    main()

"""Benchmark: faithfulness of ALTI routes, EAP, EAP-IG and random edges on SmolLM2-135M, and
what a budget curve costs.

    python -m benchmarks.faithfulness              # 5 pairs per task, three ablations (~35 min on 2 busy cores)
    python -m benchmarks.faithfulness --pairs 2 --ablations patching   # a quick look

Three tables. *Cost*: for one IOI pair (~15 tokens), a plain forward pass, the llm-flow Run,
one ablated pass, the scores of each scorer (EAP-IG with m = 5) and a 10-budget curve, in
seconds and in forward passes. *Faithfulness*: per task (config/datasets/pairs_*.jsonl, the
first N pairs) and ablation, each scorer's CPR and CMD (mean over the pairs, and of MIB's pooled
curve) and f at 1 % and 5 % of the edges; ALTI once per way of choosing its top edges
(threshold: the pruner's routes; flow; contribution). *Smallest circuit with f >= 0.8*
(patching): the route the threshold search finds against EAP-IG's top-k, edges as a share of
the full graph. Mean ablation averages over each task's 50 counterfactual prompts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parent.parent / "config" / "datasets"
TASKS = ("ioi", "capitals", "years")
ABLATIONS = ("patching", "mean", "zero")


def scorers():
    from llm_flow.faithfulness import Alti, Eap, EapIg, Random

    return [Alti(selection="threshold"), Alti(selection="flow"), Alti(selection="contribution"), Eap(), EapIg(steps=5), Random()]


def seconds(work, repeat: int = 3) -> float:
    """Best of `repeat` timings (the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def cost(model) -> list[tuple[str, str, str]]:
    """(what, seconds or count, forward passes) rows."""
    import torch

    from llm_flow.faithfulness import AblationSpec, Alti, Eap, EapIg, Random, budget_curve, prepare, read_pairs

    pair = read_pairs(DATASETS / "pairs_ioi.jsonl")[0]
    ids = torch.tensor([model.encode(pair.clean)])
    with torch.inference_mode():
        forward = seconds(lambda: model.hf_model(ids))
    spec = AblationSpec("patching", counterfactual=pair.counterfactual)
    problem = prepare(model.run(pair.clean), pair.answer, pair.foil, spec)
    half = torch.rand(len(problem.edges), generator=torch.Generator().manual_seed(0)) < 0.5

    def curve() -> None:
        problem._memo.clear()  # every pass made again
        budget_curve(problem, Random())

    timed = [
        ("forward pass (plain transformers)", forward),
        ("llm-flow Run (hooked pass, activations kept)", seconds(lambda: model.run(pair.clean))),
        ("one ablated pass (half the edges)", seconds(lambda: problem.logits(half))),
        *((f"scores: {s.label}", seconds(lambda s=s: s.scores(problem), repeat=1))
          for s in (Alti(), Eap(), EapIg(steps=5), Random())),
        ("10-budget curve (random scores, 10 passes)", seconds(curve, repeat=1)),
    ]  # fmt: skip
    rows = [("prompt (IOI pair 1)", f"{ids.shape[1]} tokens", ""), ("full graph", f"{len(problem.edges):,} edges", "")]
    return rows + [(name, f"{value:.3f} s", f"{value / forward:.1f}") for name, value in timed]


def findings(model, n_pairs: int, ablations: tuple[str, ...], log, show) -> list[dict]:
    """Each task and ablation's summary rows (shown as they come); the smallest circuits."""
    from llm_flow.faithfulness import Alti, EapIg, evaluate_pairs, read_pairs

    smallest = []
    for task in TASKS:
        every = read_pairs(DATASETS / f"pairs_{task}.jsonl")
        pairs = every[:n_pairs]
        for ablation in ablations:
            reference = [p.counterfactual for p in every] if ablation == "mean" else None
            started = time.perf_counter()
            result = evaluate_pairs(model, pairs, scorers(), ablation, reference,
                                    progress=lambda d, n, what: log(f"{task} {ablation}: {what} ({d}/{n})"))  # fmt: skip
            log(f"{task} {ablation}: {time.perf_counter() - started:.0f} s")
            for row in result.summary().to_dict("records"):
                show({"task": task, "ablation": ablation, **row})
        if "patching" in ablations:
            smallest += smallest_circuits(model, task, pairs, Alti(selection="threshold"), EapIg(steps=5), log)
    return smallest


def smallest_circuits(model, task: str, pairs, alti, eap_ig, log) -> list[dict]:
    from llm_flow.faithfulness import AblationSpec, prepare, smallest_circuit

    rows = []
    for pair in pairs:
        log(f"{task} smallest: pair {pair.pair_id}")
        spec = AblationSpec("patching", counterfactual=pair.counterfactual)
        problem = prepare(model.run(pair.clean), pair.answer, pair.foil, spec)
        scores = eap_ig.scores(problem)
        route = smallest_circuit(problem, alti, 0.8)
        signed, absolute = (smallest_circuit(problem, eap_ig, 0.8, scores, absolute=a) for a in (False, True))
        rows.append({"task": task, "pair": pair.pair_id, "edges": len(problem.edges), "alti": route.edges,
                     "threshold": route.threshold, "eap_ig": signed.edges, "eap_ig_abs": absolute.edges})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="pairs per task (default: 5 of 50)")
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help="comma-separated (default: all three)")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost table")
    args = parser.parse_args()
    ablations = tuple(a.strip() for a in args.ablations.split(","))

    import llm_flow

    model = llm_flow.load_model("smollm2-135m")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if not args.no_cost:
        print("Cost on SmolLM2-135M (CPU, best of 3; 'passes' = time / one plain forward pass)")
        for name, value, passes in cost(model):
            print(f"  {name:<46} {value:>14} {passes:>8}")
        print(flush=True)
    print(f"Faithfulness on SmolLM2-135M: the first {args.pairs} pairs of each task (of 50); mean over pairs, "
          "and CPR/CMD of the pooled curve (f from the mean metrics, as MIB)")  # fmt: skip
    print(f"  {'task':<9} {'ablation':<9} {'scorer':<29} {'CPR':>6} {'CMD':>6} {'f@1%':>7} {'f@5%':>7} "
          f"{'pooled CPR':>11} {'pooled CMD':>11}", flush=True)  # fmt: skip

    def show(r: dict) -> None:
        print(f"  {r['task']:<9} {r['ablation']:<9} {r['scorer']:<29} {r['cpr_mean']:>6.3f} {r['cmd_mean']:>6.3f} "
              f"{r['f_1%']:>7.3f} {r['f_5%']:>7.3f} {r['cpr_pooled']:>11.3f} {r['cmd_pooled']:>11.3f}", flush=True)  # fmt: skip

    smallest = findings(model, args.pairs, ablations, log, show)
    print("\nSmallest circuit with f >= 0.8 (patching): ALTI route (threshold search) vs EAP-IG's top-k (m = 5)"
          " by signed and by absolute score; median edges (share of the full graph)")  # fmt: skip
    print(f"  {'task':<9} {'pairs':>5} {'full graph':>10} {'ALTI route':>14} {'EAP-IG signed':>14} "
          f"{'EAP-IG |score|':>14} {'ALTI smallest':>14}")  # fmt: skip
    for task in TASKS:
        mine = [r for r in smallest if r["task"] == task]
        if mine:
            wins = sum(r["alti"] < min(r["eap_ig"], r["eap_ig_abs"]) for r in mine)
            print(f"  {task:<9} {len(mine):>5} {statistics.fmean(r['edges'] for r in mine):>10.0f} "
                  f"{_share(mine, 'alti'):>14} {_share(mine, 'eap_ig'):>14} {_share(mine, 'eap_ig_abs'):>14} "
                  f"{wins:>8} of {len(mine)}")  # fmt: skip


def _share(rows: list[dict], key: str) -> str:
    """Median edges and median share of the full graph."""
    edges = statistics.median(r[key] for r in rows)
    share = statistics.median(r[key] / r["edges"] for r in rows)
    return f"{edges:.0f} ({share:.1%})"


if __name__ == "__main__":
    main()

"""Benchmark: faithfulness of ALTI routes, EAP, EAP-IG and random edges on SmolLM2-135M, and
what a budget curve costs.

    python -m benchmarks.faithfulness              # 5 pairs per task, three ablations (~35 min on 2 busy cores)
    python -m benchmarks.faithfulness --pairs 2 --ablations patching   # a quick look
    python -m benchmarks.faithfulness --pairs 50 --ablations patching --scorers alti,eap-ig,random \
        --engine ray --workers 2 --record patching.jsonl --no-cost --no-smallest   # every shipped pair

With ``--record`` every pair's curves are appended to a file as they come (the pairs taken in
turn from the three tasks, a few at a time), a re-run skips the pairs already there, and the
tables are made from the file: a run stopped early still gives the pairs it finished.

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
import json
import statistics
import sys
import time
from itertools import zip_longest
from pathlib import Path

DATASETS = Path(__file__).resolve().parent.parent / "config" / "datasets"
TASKS = ("ioi", "capitals", "years")
ABLATIONS = ("patching", "mean", "zero")
MODEL = "smollm2-135m"


SCORERS = ("alti", "alti-flow", "alti-contribution", "alti-changed", "eap", "eap-ig", "random")


def scorers(names: tuple[str, ...] = SCORERS):
    from llm_flow.faithfulness import Alti, Eap, EapIg, Random

    every = {"alti": Alti(selection="threshold"), "alti-flow": Alti(selection="flow"),
             "alti-contribution": Alti(selection="contribution"), "alti-changed": Alti(changed_only=True),
             "eap": Eap(), "eap-ig": EapIg(steps=5),
             "random": Random()}  # fmt: skip
    return [every[name] for name in names]


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


def findings(model, args, ablations: tuple[str, ...], log, show) -> list[dict]:
    """Each task and ablation's summary rows (shown as they come); the smallest circuits."""
    from llm_flow.faithfulness import Alti, EapIg, read_pairs

    every = {task: read_pairs(DATASETS / f"pairs_{task}.jsonl") for task in TASKS}
    chosen = {task: pairs[: args.pairs] for task, pairs in every.items()}
    smallest = []
    for ablation in ablations:
        results = evaluate(model, args, chosen, every, ablation, log)
        for task in TASKS:
            if not results[task].evaluated:
                continue
            for row in results[task].summary().to_dict("records"):
                show({"task": task, "ablation": ablation, **row})
    if "patching" in ablations and not args.no_smallest:
        for task in TASKS:
            smallest += smallest_circuits(model, task, chosen[task], Alti(selection="threshold"), EapIg(steps=5), log)
    return smallest


def evaluate(model, args, chosen: dict, every: dict, ablation: str, log) -> dict:
    """Each task's `PairsResult` for one ablation: in one go per task, or, with ``--record``,
    a few pairs of each task in turn, every result appended to the file as it comes."""
    from llm_flow.faithfulness import BUDGETS, evaluate_pairs
    from llm_flow.faithfulness.ray_engine import curves_from_json, curves_to_json
    from llm_flow.faithfulness.sets import PairsResult

    chosen_scorers = scorers(args.scorers)
    engine = {"engine": args.engine, "workers": args.workers} if args.engine == "ray" else {}
    model = MODEL if args.engine == "ray" else model  # each Ray worker loads its own

    def run(task: str, pairs: list) -> object:
        reference = [p.counterfactual for p in every[task]] if ablation == "mean" else None
        started = time.perf_counter()
        result = evaluate_pairs(model, pairs, chosen_scorers, ablation, reference,
                                progress=lambda d, n, what: log(f"{task} {ablation}: {what} ({d}/{n})"), **engine)  # fmt: skip
        log(f"{task} {ablation}: {len(pairs)} pairs in {time.perf_counter() - started:.0f} s")
        return result

    if args.record is None:
        return {task: run(task, pairs) for task, pairs in chosen.items()}
    path = Path(args.record)
    keys = tuple(s.key for s in chosen_scorers)

    def recorded() -> dict:
        done = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["ablation"] == ablation and tuple(entry["scorers"]) == keys:
                    done[entry["pair_id"]] = curves_from_json(entry["result"])
        return done

    done = recorded()
    todo = [p for group in zip_longest(*chosen.values()) for p in group if p is not None and p.pair_id not in done]
    for start in range(0, len(todo), args.chunk):
        batch = todo[start : start + args.chunk]
        for task in TASKS:
            pairs = [p for p in batch if p.task == task]
            if pairs:
                with path.open("a") as out:
                    for result in run(task, pairs).results:
                        out.write(json.dumps({"ablation": ablation, "scorers": keys, "pair_id": result.pair.pair_id,
                                              "result": curves_to_json(result)}) + "\n")  # fmt: skip
    done = recorded()
    return {
        task: PairsResult(tuple(done[p.pair_id] for p in pairs if p.pair_id in done), keys, ablation, "logit_diff", BUDGETS)
        for task, pairs in chosen.items()
    }  # fmt: skip


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
    parser.add_argument("--scorers", default=",".join(SCORERS), help=f"comma-separated of {', '.join(SCORERS)} (default: all)")
    parser.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess", help="where pairs run (default: inprocess)")
    parser.add_argument("--workers", type=int, help="Ray actors (default: one per CPU)")
    parser.add_argument("--record", help="a .jsonl file the pairs' curves are appended to; a re-run skips them")
    parser.add_argument("--chunk", type=int, default=6, help="with --record: pairs per round (default: 6)")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost table")
    parser.add_argument("--no-smallest", action="store_true", help="skip the smallest circuits")
    args = parser.parse_args()
    ablations = tuple(a.strip() for a in args.ablations.split(","))
    args.scorers = tuple(a.strip() for a in args.scorers.split(","))

    import llm_flow

    if args.engine == "ray":  # one local Ray for every round (else each round starts and stops one)
        import logging

        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level=logging.WARNING)
    here = args.engine == "inprocess" or not (args.no_cost and args.no_smallest)
    model = llm_flow.load_model(MODEL) if here else None

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if not args.no_cost:
        print("Cost on SmolLM2-135M (CPU, best of 3; 'passes' = time / one plain forward pass)")
        for name, value, passes in cost(model):
            print(f"  {name:<46} {value:>14} {passes:>8}")
        print(flush=True)
    print(f"Faithfulness on SmolLM2-135M: up to the first {args.pairs} pairs of each task (of 50; 'pairs' = those "
          "evaluated); mean over pairs, and CPR/CMD of the pooled curve (f from the mean metrics, as MIB)")  # fmt: skip
    print(f"  {'task':<9} {'ablation':<9} {'scorer':<29} {'pairs':>5} {'CPR':>6} {'CMD':>6} {'f@1%':>7} {'f@5%':>7} "
          f"{'pooled CPR':>11} {'pooled CMD':>11}", flush=True)  # fmt: skip

    def show(r: dict) -> None:
        print(f"  {r['task']:<9} {r['ablation']:<9} {r['scorer']:<29} {r['pairs']:>5} {r['cpr_mean']:>6.3f} {r['cmd_mean']:>6.3f} "
              f"{r['f_1%']:>7.3f} {r['f_5%']:>7.3f} {r['cpr_pooled']:>11.3f} {r['cmd_pooled']:>11.3f}", flush=True)  # fmt: skip

    smallest = findings(model, args, ablations, log, show)
    if not smallest:
        return
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

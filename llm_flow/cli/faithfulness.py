"""``llm-flow faithfulness``: how much of the model's answer - foil logit difference the top edges
of each scorer keep when every other edge is ablated (MIB's budget curves, CPR and CMD), for
one prompt and its counterfactual or for a file of pairs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llm_flow.cli.common import add_model_arguments, check_writable, end_progress, load, progress
from llm_flow.config import Config
from llm_flow.dataset.settings import check_engine
from llm_flow.errors import ArgumentError
from llm_flow.faithfulness.settings import METRICS, MODES, SCORER_NAMES, SELECTIONS, AblationSpec
from llm_flow.wording import plural, step_progress


def register(commands) -> None:
    parser = commands.add_parser(
        "faithfulness", help="budget curves, CPR and CMD of edge scorers (ALTI routes, EAP, EAP-IG, random)",
        description="Keep each scorer's top edges, ablate every other edge into its destination node, and "
                    "measure how much of the answer - foil logit difference is left (MIB's protocol).",
    )  # fmt: skip
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the clean prompt")
    source.add_argument("--pairs", type=Path,
                        help=".jsonl of pairs (clean, counterfactual, answer, foil): mean and spread over the set")
    parser.add_argument("--counterfactual", help="the prompt patching reads from (same number of tokens)")
    parser.add_argument("--answer", help="the token the metric favours, e.g. ' Paris' (one token)")
    parser.add_argument("--foil", help="the token it is compared with, e.g. ' Rome' (one token)")
    parser.add_argument("--ablation", choices=MODES, default="patching",
                        help="what an ablated edge carries: its counterfactual value (default), its mean over "
                             "--reference, or zero")  # fmt: skip
    parser.add_argument("--reference", type=Path,
                        help="prompt file mean ablation averages over (default: config/datasets/prose.jsonl; "
                             "with --pairs the set's counterfactual prompts)")  # fmt: skip
    parser.add_argument("--scorer", default=",".join(SCORER_NAMES),
                        help=f"comma-separated scorers: {', '.join(SCORER_NAMES)} (default: all)")
    parser.add_argument("--metric", choices=METRICS, default="logit_diff",
                        help="answer's logit minus foil's (default) or answer's probability")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG's points between ablated and clean input (default: 5)")
    parser.add_argument("--alti-selection", choices=SELECTIONS, default="threshold",
                        help="how ALTI's top edges are chosen (default: threshold, the pruner's routes)")
    parser.add_argument("--alti-changed-only", action="store_true",
                        help="ALTI ranks last the edges the ablation cannot change (with patching: those into tokens "
                             "before the first one where the prompts differ)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random scorer (default: 0)")
    parser.add_argument("--target", type=int, default=-1, help="token position whose prediction is read (default: -1)")
    parser.add_argument("--smallest", type=float, metavar="F",
                        help="also find each scorer's smallest circuit with f >= F (one prompt only)")
    parser.add_argument("--limit", type=int, help="with --pairs: the first N pairs only")
    parser.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess",
                        help='with --pairs: inprocess (default) or ray (pip install "llm-flow[scale]"), same results')
    parser.add_argument("--workers", type=int,
                        help="Ray actors, one model each (default: one per CPU, or per GPU with --device cuda)")
    parser.add_argument("--address", help="address of an existing Ray cluster (default: start a local Ray)")
    parser.add_argument("--out", type=Path, help="write every curve as CSV (one row per scorer and budget)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    names = _check(args)
    pairs = None
    if args.pairs is not None:
        from llm_flow.faithfulness.pairs import read_pairs

        pairs = read_pairs(args.pairs)[: args.limit]
    spec = None
    if pairs is None:
        spec = AblationSpec(args.ablation, args.counterfactual, args.reference)
        if args.ablation == "mean":
            spec.reference_prompts()  # a bad reference file is refused before the model loads
    elif args.reference is not None:
        AblationSpec("mean", reference=args.reference).reference_prompts()

    from llm_flow.faithfulness import get_scorer

    scorers = [get_scorer(name, **_options(name, args)) for name in names]
    if args.engine == "ray":  # each worker loads its own
        from llm_flow.dataset.spec import ModelSpec, resolved

        return _many(resolved(ModelSpec(args.model or config.default_model, args.device, args.dtype, str(config.path))),
                     args, pairs, scorers)  # fmt: skip
    model = load(args, config)
    if pairs is None:
        return _one(model, args, spec, scorers)
    return _many(model, args, pairs, scorers)


def _check(args: argparse.Namespace) -> list[str]:
    """Everything that needs no model, refused at once; the scorer names in order."""
    names = [name.strip().lower().replace("_", "-") for name in args.scorer.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCORER_NAMES]
    if unknown or not names:
        raise ArgumentError(f"unknown scorer {unknown[0] if unknown else args.scorer!r}: use {', '.join(SCORER_NAMES)}")
    if len(set(names)) != len(names):
        raise ArgumentError(f"--scorer lists a scorer twice ({args.scorer})")
    check_engine(args.engine, args.workers, args.address)
    if args.pairs is None and args.engine != "inprocess":
        raise ArgumentError("--engine ray is for --pairs; one prompt runs in-process")
    if args.pairs is not None:
        given = [flag for flag in ("counterfactual", "answer", "foil") if getattr(args, flag) is not None]
        if given:
            raise ArgumentError(f"--{given[0]} is for one --prompt; a pair file gives each pair's own")
        if args.smallest is not None:
            raise ArgumentError("--smallest is for one --prompt")
        if args.limit is not None and args.limit < 1:
            raise ArgumentError(f"--limit must be at least 1 (got {args.limit})")
    else:
        if args.answer is None or args.foil is None:
            raise ArgumentError("give --answer and --foil (one token each, e.g. --answer ' Paris' --foil ' Rome')")
        if args.limit is not None:
            raise ArgumentError("--limit is for --pairs")
    if args.reference is not None and args.ablation != "mean":
        raise ArgumentError(f"--reference is for --ablation mean, not {args.ablation}")
    if args.smallest is not None and not 0 < args.smallest <= 1:
        raise ArgumentError(f"--smallest must be in (0, 1] (got {args.smallest})")
    if args.out is not None:
        if args.out.suffix.lower() != ".csv":
            raise ArgumentError(f"--out {args.out}: the file name must end in .csv")
        check_writable(args.out)
    return names


def _options(name: str, args: argparse.Namespace) -> dict[str, object]:
    return {"alti": {"selection": args.alti_selection, "changed_only": args.alti_changed_only},
            "eap-ig": {"steps": args.steps}, "random": {"seed": args.seed}}.get(name, {})  # fmt: skip


def _one(model, args: argparse.Namespace, spec: AblationSpec, scorers) -> int:
    import pandas as pd

    from llm_flow.faithfulness import budget_curve, prepare, smallest_circuit

    run = model.run(args.prompt)
    problem = prepare(run, args.answer, args.foil, spec, args.metric, args.target)
    curves, smallest = [], []
    for scorer in scorers:
        started = time.perf_counter()
        scores = scorer.scores(problem)

        def report(done: int, total: int) -> None:
            progress(step_progress(f"{scorer.label}: forward passes", done, total, time.perf_counter() - started))

        curves.append(budget_curve(problem, scorer, scores=scores, progress=report))
        if args.smallest is not None:
            smallest.append(smallest_circuit(problem, scorer, args.smallest, scores=scores))
    end_progress()
    _print_one(problem, args, curves, smallest)
    if args.out is not None:
        _save(pd.concat([curve.to_frame() for curve in curves], ignore_index=True), args.out)
    return 0


def _print_one(problem, args: argparse.Namespace, curves, smallest) -> None:
    run, contrast = problem.run, problem.contrast
    where = f" from {args.counterfactual!r}" if args.ablation == "patching" else ""
    print(f"Prompt  {run.n_tokens} tokens; metric {args.metric} of {args.answer!r} vs {args.foil!r} "
          f"at token {contrast.position} ({run.str_tokens[contrast.position]!r})")  # fmt: skip
    print(f"Ablation {args.ablation}{where}; full graph {len(problem.edges):,} edges")
    print(f"m(M) = {problem.full:.3f} (clean)   m(∅) = {problem.empty:.3f} (every edge ablated)")
    print("\nf of the top edges by score (by |score| in brackets where it differs):")
    _print_table(curves[0].budgets, curves[0].edges, [c.scorer for c in curves],
                 [[_cell(s, a) for s, a in zip(c.faithfulness, c.faithfulness_absolute)] for c in curves],
                 [c.cpr for c in curves], [c.cmd for c in curves])  # fmt: skip
    if smallest:
        print()
    for curve, circuit in zip(curves, smallest):
        threshold = f", route threshold {circuit.threshold:.4g}" if curve.scorer == "alti" and args.alti_selection == "threshold" else ""
        print(f"Smallest {curve.scorer} circuit with f >= {args.smallest}: {plural(circuit.edges, 'edge')} "
              f"({circuit.fraction:.1%}), f = {circuit.faithfulness:.3f}{threshold} ({circuit.passes} passes)")


def _many(model, args: argparse.Namespace, pairs, scorers) -> int:
    from llm_flow.faithfulness import evaluate_pairs

    started = time.perf_counter()

    def report(done: int, total: int, what: str) -> None:
        progress(step_progress(f"Pairs ({what})", done, total, time.perf_counter() - started))

    result = evaluate_pairs(model, pairs, scorers, args.ablation, args.reference, args.metric, progress=report,
                            engine=args.engine, workers=args.workers, address=args.address)  # fmt: skip
    end_progress()
    failed = [r for r in result.results if r.error is not None]
    print(f"Pairs   {len(result.evaluated)} of {len(pairs)} evaluated from {args.pairs}; ablation {args.ablation}, "
          f"metric {args.metric}; engine {args.engine}")  # fmt: skip
    for r in failed[:3]:
        print(f"  skipped {r.pair.pair_id}: {r.error}")
    if not result.evaluated:
        raise ArgumentError("no pair could be evaluated (see the reasons above)")
    summary = result.summary()
    print("\nPer pair (mean ± standard deviation), and the pooled curve (f from the set's mean metrics, as MIB):")
    print(f"  {'scorer':<24} {'CPR':>13} {'CMD':>13} {'f at 1%':>8} {'f at 5%':>8} {'pooled CPR':>11} {'pooled CMD':>11}")
    for row in summary.to_dict("records"):
        print(f"  {row['scorer']:<24} {row['cpr_mean']:>6.3f} ± {row['cpr_sd']:<4.2f} {row['cmd_mean']:>6.3f} ± "
              f"{row['cmd_sd']:<4.2f} {row.get('f_1%', float('nan')):>8.3f} {row.get('f_5%', float('nan')):>8.3f} "
              f"{row['cpr_pooled']:>11.3f} {row['cmd_pooled']:>11.3f}")  # fmt: skip
    print("\nPooled f of the top edges by score (by |score| in brackets where it differs):")
    pooled = [result.pooled(name) for name in result.scorers]
    edges = ["" for _ in result.budgets]
    _print_table(result.budgets, edges, list(result.scorers), [[_cell(s, a) for s, a in zip(*p)] for p in pooled],
                 list(summary["cpr_pooled"]), list(summary["cmd_pooled"]))  # fmt: skip
    if args.out is not None:
        _save(result.frame(), args.out)
    return 0


def _print_table(budgets, edges, names, cells, cprs, cmds) -> None:
    width = max(16, *(len(n) + 2 for n in names))
    print(f"  {'budget':>7} {'edges':>6} " + "".join(f"{n:>{width}}" for n in names))
    for k, budget in enumerate(budgets):
        print(f"  {budget:>7.1%} {edges[k]:>6} " + "".join(f"{column[k]:>{width}}" for column in cells))
    print(f"  {'CPR':>14} " + "".join(f"{v:>{width}.3f}" for v in cprs) + "   (area under f: higher is better)")
    print(f"  {'CMD':>14} " + "".join(f"{v:>{width}.3f}" for v in cmds) + "   (area between f and 1: lower is better)")


def _cell(signed: float, absolute: float) -> str:
    signed, absolute = round(signed, 3) + 0.0, round(absolute, 3) + 0.0  # no "-0.000"
    return f"{signed:.3f}" if signed == absolute else f"{signed:.3f} ({absolute:.3f})"


def _save(frame, path: Path) -> None:
    from llm_flow.export import save_table

    save_table(frame, path)
    print(f"\nCurves written to {path} (CSV, one row per scorer and budget).")

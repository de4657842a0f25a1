"""``llm-flow routes --check``: re-run the model with the route alone, without it, and with random
parts of the same size, and say whether the route carries the prediction.

Not a subcommand of its own: `routes` adds these options and calls `print_check`. Nothing heavy
is imported at module level.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from llm_flow.cli.common import check_writable
from llm_flow.errors import ArgumentError
from llm_flow.wording import probability

if TYPE_CHECKING:
    import networkx as nx

    from llm_flow.interventions import Outcome
    from llm_flow.models.run import Run

MAX_DRAWS = 1000  # as llm_flow.interventions.route_checks.MAX_DRAWS, without importing torch here


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checking the route on the model (two forward passes per random draw)")
    group.add_argument("--check", action="store_true",
                       help="re-run with the route only, the route removed, and random parts of the same size")
    group.add_argument("--draws", type=int, default=20, help="random draws for each baseline (default: 20)")
    group.add_argument("--seed", type=int, default=0, help="seed of the random draws (default: 0)")
    group.add_argument("--ffn-mode", choices=("zero", "mean"), default="zero",
                       help="a removed FFN output is zeroed or replaced by its mean over the prompt (default: zero)")
    group.add_argument("--check-csv", type=Path, help="write every outcome of the check (each draw) as CSV")
    group.add_argument("--curve-csv", type=Path,
                       help="write the route-only probability at thresholds 0.01..0.2 as CSV (one pass per threshold)")


def check_check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad check options before the model loads."""
    for flag, path in (("--check-csv", args.check_csv), ("--curve-csv", args.curve_csv)):
        if path is None:
            continue
        if not args.check:
            raise ArgumentError(f"{flag} needs --check")
        if path.suffix.lower() != ".csv":
            raise ArgumentError(f"{flag} {path}: the file name must end in .csv")
        check_writable(path)
    if not 1 <= args.draws <= MAX_DRAWS:
        raise ArgumentError(f"--draws must be 1..{MAX_DRAWS} (got {args.draws})")


def print_check(run: "Run", graph: "nx.DiGraph", args: argparse.Namespace) -> None:
    from llm_flow.export import save_table
    from llm_flow.interventions import check_route, threshold_curve

    check = check_route(run, graph, draws=args.draws, seed=args.seed, ffn_mode=args.ffn_mode)
    where = "at" if run.model.info.bidirectional else "after"  # an encoder predicts the token itself ([MASK])
    print(f"\nCheck   p({check.token!r}) {where} position {check.position}, re-running the model "
          f"({args.draws} random draws each, seed {args.seed}, FFN {args.ffn_mode}):")
    print(f"  {'unmodified':<16} {_fate(check.unmodified)}")
    print(f"  {'route only':<16} {_fate(check.route_only)}   ({check.n_dropped_parts:,} parts off the route removed)")
    print(f"  {'random only':<16} {_spread(check.random_only)}")
    print(f"  {'route removed':<16} {_fate(check.route_removed)}   ({check.n_route_parts:,} route parts removed)")
    print(f"  {'random removed':<16} {_spread(check.random_removed)}")
    print(f"Meaning the route alone gives p({check.token!r}) above {check.only_percentile:.0f}% of random routes "
          f"of its size; removing it leaves p below {100 - check.removed_percentile:.0f}% of random removals of its size.")
    if args.check_csv is not None:
        save_table(check.draws_table(), args.check_csv)
        print(f"Check written to {args.check_csv} (CSV, one row per pass).")
    if args.curve_csv is not None:
        curve = threshold_curve(run, graph, token=check.token_id, ffn_mode=args.ffn_mode)
        save_table(curve, args.curve_csv)
        print(f"Threshold curve written to {args.curve_csv} (CSV).")


def _fate(fate: "Outcome") -> str:
    return f"p = {probability(fate.probability):>8}   logit {fate.logit:7.2f}   rank {fate.rank:,}"


def _spread(draws: "tuple[Outcome, ...]") -> str:
    probs = sorted(o.probability for o in draws)
    median, low, high = (probability(p) for p in (statistics.median(probs), probs[0], probs[-1]))
    return f"p = {median:>8} median, {low}..{high} over {len(probs)} draws"

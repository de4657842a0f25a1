"""``llm-flow dataset``: routes for every prompt of a file, reduced to per-component statistics
in a results folder (Parquet), in-process or on Ray. A re-run over the same folder resumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm_flow.cli.common import add_figure_size_arguments, add_model_arguments, check_writable, figure_size, progress
from llm_flow.config import Config
from llm_flow.wording import plural


def register(commands) -> None:
    parser = commands.add_parser(
        "dataset", help="routes over a prompt file: which heads and FFN blocks matter, as Parquet statistics"
    )
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=Path, required=True,
                        help='.txt (one prompt per line), .jsonl ("text", optional "id"), .csv or .parquet ("text" column)')
    parser.add_argument("--out", type=Path, required=True,
                        help="results folder (created; an earlier one with the same settings is resumed)")
    parser.add_argument("--positions", choices=("last", "all"), default="last",
                        help="route graphs for the last token of each prompt, or for every token (default: last)")
    parser.add_argument("--targets", choices=("last", "all"), dest="positions", action=_Renamed,
                        help=argparse.SUPPRESS)  # the flag's name before --positions; still accepted
    parser.add_argument("--threshold", type=float, default=0.04, help="drop contributions <= this (default: 0.04)")
    parser.add_argument("--no-renormalize", dest="renormalize", action="store_false",
                        help="do not rescale surviving contributions to sum to 1")
    parser.add_argument("--max-tokens", type=int,
                        help="longer prompts become error rows (default: the config's limits.max_prompt_tokens)")
    parser.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess",
                        help='inprocess (default) or ray (pip install "llm-flow[scale]")')
    parser.add_argument("--workers", type=int,
                        help="Ray actors, one model each (default: one per CPU, or per GPU with --device cuda)")
    parser.add_argument("--address", help="address of an existing Ray cluster (default: start a local Ray)")
    parser.add_argument("--top", type=int, default=5, help="how many heads and FFN blocks to list (default: 5)")
    parser.add_argument("--metric", choices=("frequency", "mean_contribution"), default="frequency",
                        help="what the exported heatmap shows (default: frequency)")
    parser.add_argument("--html", type=Path, help="write the heatmap of heads and FFN blocks as standalone HTML")
    parser.add_argument("--svg", type=Path, help="write the heatmap as SVG (needs Chromium: apt-get install chromium)")
    parser.add_argument("--png", type=Path, help="write the heatmap as PNG (needs Chromium)")
    add_figure_size_arguments(parser)
    parser.set_defaults(handler=run)


class _Renamed(argparse.Action):
    """A flag kept under its old name: it works, and says which name to use now."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"llm-flow dataset: {option_string} is now called --positions; the old name will go", file=sys.stderr)
        setattr(namespace, self.dest, values)


def run(args: argparse.Namespace, config: Config) -> int:
    from llm_flow.dataset.prompts import read_prompts
    from llm_flow.dataset.settings import Settings, check_engine
    from llm_flow.dataset.spec import ModelSpec, resolved, run_config
    from llm_flow.dataset.store import check_folder
    from llm_flow.errors import ArgumentError

    # Everything a user can get wrong is refused here, before torch or a model loads.
    settings = Settings(args.positions, args.threshold, args.renormalize)
    check_engine(args.engine, args.workers, args.address)
    if args.top < 1:
        raise ArgumentError(f"--top must be at least 1 (got {args.top})")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ArgumentError(f"--max-tokens must be at least 1 (got {args.max_tokens})")
    figures = [path for suffix, path in ((".html", args.html), (".svg", args.svg), (".png", args.png)) if path]
    for suffix, path in ((".html", args.html), (".svg", args.svg), (".png", args.png)):
        if path is not None and path.suffix.lower() != suffix:
            raise ArgumentError(f"--{suffix[1:]} {path}: the file name must end in {suffix}")
        if path is not None:
            check_writable(path)
    size = figure_size(args)
    items = read_prompts(args.prompts)
    source = args.model or config.default_model
    spec = resolved(ModelSpec(source, args.device, args.dtype, str(config.path), args.max_tokens))
    check_folder(args.out, run_config(spec, settings))

    from llm_flow.dataset.run import analyse_dataset

    progress(f"Routes for {plural(len(items), 'prompt')} of {args.prompts} with {source} ({args.engine})…")
    summary = analyse_dataset(items, args.out, spec, settings, engine=args.engine, workers=args.workers, address=args.address)
    _print_summary(summary, args)
    if figures:
        _write_figures(summary.folder, args.metric, figures, size)
    return 0


def _write_figures(folder: Path, metric: str, paths: list[Path], size: dict) -> None:
    from llm_flow.dataset.results import component_grid, load_results
    from llm_flow.export import save_figure
    from llm_flow.figures.dataset import component_heatmap

    grid = component_grid(load_results(folder), metric)
    for path in paths:
        save_figure(component_heatmap(grid), path, title=f"{grid.title}: {metric.replace('_', ' ')}", **size)
        print(f"Figure written to {path}.")


def _print_summary(summary, args: argparse.Namespace) -> None:
    from llm_flow.dataset.results import load_results

    print(f"Analysed {plural(summary.processed, 'prompt')} ({summary.skipped} already done in {summary.folder}).")
    print(f"Folder  {summary.ok} ok, {plural(summary.errors, 'error')}, {plural(summary.graphs, 'route graph')}")
    if summary.first_error:
        print(f"Errors  first: prompt {summary.first_error}")
    results = load_results(summary.folder)
    everything = results.components[results.components["position_class"] == "all"]
    for kind, title in (("head", "Heads "), ("ffn", "FFNs  ")):
        rows = everything[everything["kind"] == kind].sort_values(
            ["frequency", "mean_contribution"], ascending=False, kind="stable"
        ).head(args.top)
        listing = ", ".join(f"{c} {f:.0%}" for c, f in zip(rows["component"], rows["frequency"]))
        print(f"{title}  most often on a route: {listing}")
    experts = results.experts
    if not experts.empty:
        rows = experts[experts["expert"] >= 0].sort_values(
            ["selection_rate", "mean_contribution"], ascending=False, kind="stable"
        ).head(args.top)
        listing = ", ".join(
            f"L{layer}.E{expert} {rate:.0%} (share {share:.2f})"
            for layer, expert, rate, share in rows[["layer", "expert", "selection_rate", "mean_share"]].itertuples(index=False)
        )  # fmt: skip
        print(f"Experts  most often chosen at the explained positions: {listing}")
    print(
        f"Written {summary.folder}/components.parquet, prompts.parquet, prompt_components.parquet, "
        "experts.parquet, prompt_experts.parquet, metadata.json"
    )

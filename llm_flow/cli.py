"""The ``llm-flow`` command: routes for a prompt, as a readable summary and a JSON graph."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import networkx as nx

from llm_flow.config import Config, load_config
from llm_flow.errors import ArgumentError, LlmFlowError
from llm_flow.models.base import check_prompt_text
from llm_flow.models.loading import load_model
from llm_flow.routes.graph import build_graph, check_threshold
from llm_flow.views.predictions import top_predictions
from llm_flow.views.route_summary import summarize_route


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        return args.command(args, config)
    except LlmFlowError as exc:
        print(f"llm-flow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-flow", description="Information-flow routes inside transformer language models."
    )
    parser.add_argument("--config", help="config file (default: $LLM_FLOW_CONFIG or config/local.json)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    routes = commands.add_parser("routes", help="the route graph that explains one token's prediction")
    routes.add_argument("--model", help="configured name, local folder, .gguf file or hub id (default: the config's)")
    routes.add_argument("--prompt", help="text to analyse (default: the first configured prompt)")
    routes.add_argument("--target", type=int, default=-1, help="token position to explain (default: -1, the last)")
    routes.add_argument("--threshold", type=float, default=0.04, help="drop contributions <= this (default: 0.04)")
    routes.add_argument("--no-renormalize", dest="renormalize", action="store_false",
                        help="do not rescale surviving contributions to sum to 1")
    routes.add_argument("--out", type=Path, help="write the graph here as node-link JSON")
    routes.add_argument("--top", type=int, default=5, help="how many predictions, heads and FFNs to list")
    routes.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    routes.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (CUDA only)")
    routes.set_defaults(command=_routes)

    models = commands.add_parser("models", help="list the configured models")
    models.set_defaults(command=_models)
    return parser


def _routes(args: argparse.Namespace, config: Config) -> int:
    check_threshold(args.threshold)
    if args.top < 1:
        raise ArgumentError(f"--top must be at least 1 (got {args.top})")
    prompt = check_prompt_text(args.prompt if args.prompt is not None else _first_prompt(config))
    name = args.model or config.default_model
    model = load_model(name, device=args.device, dtype=args.dtype, config=config, progress=_progress)
    run = model.run(prompt)
    graph = build_graph(run, args.target, args.threshold, args.renormalize)
    target = graph.graph["target"]
    _print_summary(model, run, graph, target, args)
    if args.out is not None:
        _write_json(graph, args.out)
        print(f"\nGraph written to {args.out} (node-link JSON).")
    return 0


def _print_summary(model, run, graph: nx.DiGraph, target: int, args: argparse.Namespace) -> None:
    info = model.info
    print(f"Model   {info.name} ({info.architecture}: {info.n_layers} layers x {info.n_heads} heads, "
          f"d_model {info.d_model})")
    print(f"Prompt  {run.n_tokens} tokens: " + "".join(f"[{t}]" for t in run.str_tokens))
    print(f"Target  position {target} {run.str_tokens[target]!r}; the model predicts next:")
    for rank, p in enumerate(top_predictions(run, target, args.top), 1):
        print(f"  {rank:>2}. {p.token!r:<20} {p.probability:7.2%}")
    summary = summarize_route(graph)
    renorm = "renormalised" if args.renormalize else "not renormalised"
    print(f"\nRoute   threshold {args.threshold} ({renorm}): {graph.number_of_nodes()} nodes, "
          f"{graph.number_of_edges()} edges")
    reached = ", ".join(f"{p}:{run.str_tokens[p]!r}" for p in summary.input_positions)
    print(f"Inputs  the route reaches {len(summary.input_positions)} of {run.n_tokens} tokens: {reached or 'none'}")
    if summary.heads:
        print("Heads   carrying the most (summed weight of kept attention edges):")
        for layer, head, weight in summary.heads[: args.top]:
            print(f"  L{layer:<3} H{head:<3} {weight:6.3f}")
    if summary.ffns:
        print("FFNs    carrying the most (weight of the FFN in the residual after the layer):")
        for layer, position, weight in summary.ffns[: args.top]:
            print(f"  L{layer:<3} at {position}:{run.str_tokens[position]!r:<14} {weight:6.3f}")
    counts = "  ".join(f"{'X' if layer < 0 else layer}:{n}" for layer, n in summary.layer_nodes.items())
    print(f"Nodes per layer  {counts}")


def _write_json(graph: nx.DiGraph, path: Path) -> None:
    try:
        path.write_text(json.dumps(nx.node_link_data(graph, edges="edges"), indent=1), encoding="utf-8")
    except OSError as exc:
        raise ArgumentError(f"cannot write {path}: {exc.strerror}") from None


def _models(args: argparse.Namespace, config: Config) -> int:
    print(f"Models in {config.path} (default: {config.default_model}):")
    for name, entry in config.models.items():
        source = entry.source if isinstance(entry.source, str) else f"{entry.source.file} from PyPI {entry.source.pypi}"
        marker = "*" if name == config.default_model else " "
        print(f" {marker} {name:<20} {source}")
        if entry.description:
            print(f"   {'':<20} {entry.description}")
    return 0


def _first_prompt(config: Config) -> str:
    if not config.prompts:
        raise ArgumentError("no --prompt given and the config lists no prompts")
    return config.prompts[0]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

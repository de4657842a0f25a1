"""``llm-flow routes``: the route graph that explains one token's prediction, as a readable
summary and, on request, as JSON. On an encoder–decoder the prompt is the source, ``--target``
the target text and ``--position`` the decoder position explained (routes across both stacks)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from llm_flow.validation import check_threshold
from llm_flow.cli.common import (
    add_figure_size_arguments,
    add_model_arguments,
    check_writable,
    figure_size,
    load,
    prompt_or_default,
)
from llm_flow.cli.route_check import add_check_arguments, check_check_arguments, print_check
from llm_flow.config import Config
from llm_flow.errors import ArgumentError
from llm_flow.wording import plural, probability

if TYPE_CHECKING:
    import networkx as nx

    from llm_flow.models.run import Run


def register(commands) -> None:
    parser = commands.add_parser("routes", help="the route graph that explains one token's prediction")
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="text to analyse (default: the first configured prompt)")
    parser.add_argument(
        "--target", default=None,
        help="decoders and encoders: the token position to explain (default: the last; in an encoder's prompt "
             "the first [MASK]); encoder–decoders: the target text (the prompt is the source; default: the "
             "model writes it greedily)",
    )  # fmt: skip
    parser.add_argument("--position", type=int, default=None,
                        help="encoder–decoders: the decoder position to explain, the one that predicts target "
                             "token N (default: the last target token before the end of the sequence)")
    parser.add_argument("--generate", type=int, default=40,
                        help="encoder–decoders without --target: most target tokens to write (default: 40)")
    parser.add_argument("--threshold", type=float, default=0.04, help="drop contributions <= this (default: 0.04)")
    parser.add_argument("--no-renormalize", dest="renormalize", action="store_false",
                        help="do not rescale surviving contributions to sum to 1")
    parser.add_argument("--out", type=Path, help="write the graph here as node-link JSON")
    parser.add_argument("--html", type=Path, help="write the route figure as standalone interactive HTML (opens offline)")
    parser.add_argument("--svg", type=Path, help="write the route figure as SVG (needs Chromium: apt-get install chromium)")
    parser.add_argument("--png", type=Path, help="write the route figure as PNG (needs Chromium)")
    parser.add_argument("--compact", action="store_true", help="in figures, only the token columns the route reaches")
    add_figure_size_arguments(parser)
    parser.add_argument("--top", type=int, default=5, help="how many predictions, heads and FFNs to list")
    add_check_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    check_threshold(args.threshold)
    if args.top < 1:
        raise ArgumentError(f"--top must be at least 1 (got {args.top})")
    figures = {suffix: path for suffix, path in ((".html", args.html), (".svg", args.svg), (".png", args.png)) if path}
    for suffix, path in figures.items():
        if path.suffix.lower() != suffix:
            raise ArgumentError(f"--{suffix[1:]} {path}: the file name must end in {suffix}")
    for path in (args.out, *figures.values()):
        if path is not None:
            check_writable(path)
    size = figure_size(args)
    check_check_arguments(args)
    prompt = prompt_or_default(args.prompt, config)
    from llm_flow.routes.graph import build_graph
    from llm_flow.views.predictions import default_target

    model = load(args, config)
    from llm_flow.models.seq2seq import Seq2SeqLlm

    if isinstance(model, Seq2SeqLlm):
        return _run_seq2seq(model, prompt, args, figures.values(), size)
    if args.position is not None:
        raise ArgumentError(f"--position is for encoder–decoders; {model.info.name} is not one: "
                            "give the token position to explain as --target N")  # fmt: skip
    run_ = model.run(prompt)
    target = default_target(run_) if args.target is None else _position(args.target)
    graph = build_graph(run_, target, args.threshold, args.renormalize)
    _print_summary(run_, graph, args)
    if args.check:
        print_check(run_, graph, args)
    if args.out is not None:
        _write_json(graph, args.out)
        print(f"\nGraph written to {args.out} (node-link JSON).")
    if figures:
        _write_figures(run_, graph, figures.values(), compact=args.compact, size=size)
    return 0


def _position(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ArgumentError(
            f"--target {text!r}: for this model --target is the token position to explain, a whole number "
            "such as 3 or -1 (a target text is for encoder–decoders)"
        ) from None


def _run_seq2seq(seq2seq, source: str, args: argparse.Namespace, paths, size: dict) -> int:
    """Routes across the two stacks of an encoder–decoder (`seq2seq`, a `Seq2SeqLlm`)."""
    from llm_flow.routes.seq2seq_graph import default_decoder_position, seq2seq_route

    if args.check:
        raise ArgumentError("route checks re-run the model with parts removed: they are for decoder-only models "
                            "so far; leave out --check on an encoder–decoder")  # fmt: skip
    run_ = seq2seq.run_pair(source, args.target, max_new_tokens=args.generate)
    position = default_decoder_position(run_) if args.position is None else args.position
    graph = seq2seq_route(run_, position, args.threshold, args.renormalize)
    _print_seq2seq_summary(run_, graph, args)
    if args.out is not None:
        _write_json(graph, args.out)
        print(f"\nGraph written to {args.out} (node-link JSON).")
    if paths:
        from llm_flow.export import route_title, save_figure
        from llm_flow.figures.route import route_figure

        target = graph.graph["target"]
        title = route_title(seq2seq.name, source, run_.decoder_str_tokens[target], target,
                            graph.graph["threshold"], graph.graph["renormalize"])  # fmt: skip
        figure = route_figure(graph, compact=args.compact)
        for path in paths:
            save_figure(figure, path, title=title, **size)
            print(f"Figure written to {path}.")
    return 0


def _print_seq2seq_summary(run, graph: "nx.DiGraph", args: argparse.Namespace) -> None:
    import torch

    from llm_flow.views.route_summary import stack_summaries

    info, target = run.model.info, graph.graph["target"]
    print(f"Model   {info.name} (encoder–decoder: {info.encoder_layers} encoder and {info.n_layers} decoder "
          f"layers x {info.n_heads} heads, d_model {info.d_model})")  # fmt: skip
    print(f"Source  {plural(run.n_source, 'token')}: " + "".join(f"[{t}]" for t in run.source_str_tokens))
    written = " (written by the model)" if run.target is None else ""
    print(f"Target  {plural(run.n_decoder - 1, 'token')}{written}: " + "".join(f"[{t}]" for t in run.decoder_str_tokens[1:]))
    reads = "".join(f"[{t}]" for t in run.decoder_str_tokens[: target + 1])
    following = f"target token {target} is {run.decoder_str_tokens[target + 1]!r}" if target + 1 < run.n_decoder \
        else "the target ends before it"
    print(f"Explain decoder position {target}, reading {reads} ({following}); the model predicts:")
    probabilities = torch.softmax(run.logits[target].double(), -1)
    top = torch.topk(probabilities, min(args.top, probabilities.shape[0]))
    for rank, (p, token) in enumerate(zip(top.values.tolist(), run.model.decode_tokens(top.indices)), 1):
        print(f"  {rank:>2}. {token!r:<20} {probability(p):>8}")
    summaries = stack_summaries(graph)
    renorm = "renormalised" if args.renormalize else "not renormalised"
    counts = {stack: sum(1 for _, d in graph.nodes(data=True) if d["stack"] == stack) for stack in ("decoder", "encoder")}
    print(f"\nRoute   threshold {args.threshold} ({renorm}): {graph.number_of_nodes()} nodes ({counts['decoder']} "
          f"decoder, {counts['encoder']} encoder), {graph.number_of_edges()} edges")  # fmt: skip
    reached = sorted({graph.nodes[u]["position"] for u, _, d in graph.edges(data=True) if d["kind"] == "cross"})
    tokens = ", ".join(f"{s}:{run.source_str_tokens[s]!r}" for s in reached)
    print(f"Source  cross-attention edges reach {len(reached)} of {plural(run.n_source, 'source token')}: {tokens or 'none'}")
    for stack, title in (("cross", "cross-attention"), ("decoder", "decoder self-attention"),
                         ("encoder", "encoder self-attention")):  # fmt: skip
        if summaries[stack].heads:
            print(f"Heads   {title}, carrying the most (summed weight of kept edges):")
            for layer, head, weight in summaries[stack].heads[: args.top]:
                print(f"  L{layer:<3} H{head:<3} {weight:6.3f}")
    for stack, words in (("decoder", run.decoder_str_tokens), ("encoder", run.source_str_tokens)):
        if summaries[stack].ffns:
            print(f"FFNs    {stack}, carrying the most (weight of the FFN in the residual after the layer):")
            for layer, position, weight in summaries[stack].ffns[: args.top]:
                print(f"  L{layer:<3} at {position}:{words[position]!r:<14} {weight:6.3f}")


def _write_figures(run: "Run", graph: "nx.DiGraph", paths, compact: bool, size: dict) -> None:
    from llm_flow.export import route_title, save_figure
    from llm_flow.figures.route import route_figure

    target = graph.graph["target"]
    title = route_title(run.model.name, run.prompt, run.str_tokens[target], target,
                        graph.graph["threshold"], graph.graph["renormalize"])  # fmt: skip
    figure = route_figure(graph, compact=compact)
    for path in paths:
        save_figure(figure, path, title=title, **size)
        print(f"Figure written to {path}.")


def _print_summary(run: "Run", graph: "nx.DiGraph", args: argparse.Namespace) -> None:
    from llm_flow.views.predictions import top_predictions
    from llm_flow.views.route_summary import summarize_route

    info, target = run.model.info, graph.graph["target"]
    print(f"Model   {info.name} ({info.architecture}: {info.n_layers} layers x {info.n_heads} heads, "
          f"d_model {info.d_model})")
    print(f"Prompt  {plural(run.n_tokens, 'token')}: " + "".join(f"[{t}]" for t in run.str_tokens))
    where = "at this token" if info.bidirectional else "next"
    print(f"Target  position {target} {run.str_tokens[target]!r}; the model predicts {where}:")
    for rank, p in enumerate(top_predictions(run, target, args.top), 1):
        print(f"  {rank:>2}. {p.token!r:<20} {probability(p.probability):>8}")
    summary = summarize_route(graph)
    renorm = "renormalised" if args.renormalize else "not renormalised"
    print(f"\nRoute   threshold {args.threshold} ({renorm}): {graph.number_of_nodes()} nodes, "
          f"{graph.number_of_edges()} edges")
    reached = ", ".join(f"{p}:{run.str_tokens[p]!r}" for p in summary.input_positions)
    print(f"Inputs  the route reaches {len(summary.input_positions)} of {plural(run.n_tokens, 'token')}: {reached or 'none'}")
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


def _write_json(graph: "nx.DiGraph", path: Path) -> None:
    from llm_flow.routes.graph import graph_json

    try:
        path.write_text(graph_json(graph), encoding="utf-8")
    except OSError as exc:
        raise ArgumentError(f"cannot write {path}: {exc.strerror}") from None

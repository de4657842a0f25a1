"""``llm-flow attention``: BertViz's head, model and neuron views for a prompt, as figures (HTML,
SVG, PNG), a CSV of the numbers behind them, and a short summary on the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from llm_flow.validation import (
    ATTENTION_WEIGHTINGS,
    HEAD_AGGREGATIONS,
    PAIR_PARTS,
    SEQ2SEQ_STACKS as STACKS,
    check_count,
    check_pair_part,
)
from llm_flow.cli.common import (
    add_figure_size_arguments,
    add_model_arguments,
    check_writable,
    figure_size,
    load,
    prompt_or_default,
)
from llm_flow.config import Config
from llm_flow.errors import ArgumentError

if TYPE_CHECKING:
    import pandas as pd

    from llm_flow.models.run import Run

VIEWS = ("head", "model", "neuron")
_FIGURE_FLAGS = (("html", ".html"), ("svg", ".svg"), ("png", ".png"))


def register(commands) -> None:
    parser = commands.add_parser(
        "attention", help="attention heads as BertViz draws them (head, model, neuron views), weighted three ways"
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="text to analyse (default: the first configured prompt)")
    parser.add_argument("--view", choices=VIEWS, default="head",
                        help="head: one layer, lines per head; model: all layers x heads; "
                             "neuron: how one head scores one query (default: head)")
    parser.add_argument("--layer", type=int, help="layer of the head and neuron views (required for them)")
    parser.add_argument("--layers", help="model view: comma-separated layers to show (default: all)")
    parser.add_argument("--heads", help="head and model views: comma-separated heads (default: all)")
    parser.add_argument("--head", type=int, default=0, help="neuron view: the head (default: 0)")
    parser.add_argument("--query", type=int,
                        help="neuron view: the query token (default: -1, the last); head view: keep only this "
                             "token's lines; both: the centre of --window")
    parser.add_argument("--weight", choices=ATTENTION_WEIGHTINGS, default="attention",
                        help="head and model views: attention weight, attention x ||(v+b_V) W_O||_2 (norm), "
                             "or the route engine's ALTI contribution (default: attention)")
    parser.add_argument("--window", type=int, help="show only this many tokens around --query (default: all)")
    parser.add_argument("--top-k", type=int, dest="top_k", help="keep the k strongest sources per query (and head)")
    parser.add_argument("--aggregate", choices=HEAD_AGGREGATIONS, help="head and model views: fold the heads into one")
    parser.add_argument("--split", type=int, help="sentence pairs: position of sentence B's first token")
    parser.add_argument("--part", choices=PAIR_PARTS, default="all",
                        help="sentence pairs: keep only this query -> source segment pair (default: all)")
    parser.add_argument("--target", help="encoder–decoders: the target text (the prompt is the source; default: "
                                         "the model writes it greedily)")
    parser.add_argument("--generate", type=int, default=40,
                        help="encoder–decoders without --target: most target tokens to write (default: 40)")
    parser.add_argument("--stack", choices=("all",) + STACKS, default="all",
                        help="encoder–decoders: which attention to draw: the encoder's, the decoder's, the "
                             "cross-attention (decoder tokens reading source tokens), or all three as tabs in "
                             "the HTML (default: all)")
    parser.add_argument("--html", type=Path, help="write the figure as standalone interactive HTML (opens offline)")
    parser.add_argument("--svg", type=Path, help="write the figure as SVG (needs Chromium: apt-get install chromium)")
    parser.add_argument("--png", type=Path, help="write the figure as PNG (needs Chromium)")
    add_figure_size_arguments(parser)
    parser.add_argument("--csv", type=Path, help="write the numbers behind the figure as CSV")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    figures = _checked_outputs(args)
    size = figure_size(args)
    layers, heads = _indices(args.layers, "--layers"), _indices(args.heads, "--heads")
    if args.view in ("head", "neuron") and args.layer is None:
        raise ArgumentError(f"the {args.view} view needs --layer")
    check_count(args.window, "--window")
    check_count(args.top_k, "--top-k")
    check_pair_part(args.part, args.split)
    prompt = prompt_or_default(args.prompt, config)
    from llm_flow.export import save_figure, save_table, title_text

    model = load(args, config)
    from llm_flow.models.seq2seq import Seq2SeqLlm

    if isinstance(model, Seq2SeqLlm):
        return _run_seq2seq(model, prompt, args, layers, heads, figures, size)
    if args.target is not None or args.stack != "all":
        raise ArgumentError(f"--target and --stack are for encoder–decoders; {model.info.name} is not one")
    run_ = model.run(prompt)
    figure, table = _build(run_, args, layers, heads)
    print(f"Model   {model.info.name} ({model.info.n_layers} layers x {model.info.n_heads} heads, "
          f"{model.info.n_kv_heads} key/value heads)")  # fmt: skip
    print(f"Prompt  {run_.n_tokens} tokens")
    _print_strongest(table, args.view)
    title = f"{title_text(model.info.name)} · {figure.layout.title.text}"
    for path in figures:
        save_figure(figure, path, title=title, **size)
        print(f"Figure written to {path}.")
    if args.csv is not None:
        save_table(table, args.csv)
        print(f"Numbers written to {args.csv} (CSV).")
    return 0


def _run_seq2seq(seq2seq, source: str, args: argparse.Namespace, layers, heads, figures: list[Path], size: dict) -> int:
    """The three attentions of an encoder–decoder (`seq2seq`, a `Seq2SeqLlm`: its own interface, not a
    `TransparentLlm`'s), or the one `--stack` names; as tabs in HTML."""
    import pandas as pd

    from llm_flow.export import save_figure, save_table, title_text
    from llm_flow.figures.attention import head_view_figure, model_view_figure
    from llm_flow.notebook.page import HtmlPage
    from llm_flow.views.attention import attention_table
    from llm_flow.views.seq2seq_attention import seq2seq_views

    unsupported = [flag for flag, value in (("--window", args.window), ("--split", args.split),
                                            ("--query", args.query)) if value is not None]  # fmt: skip
    if args.view == "neuron" or args.weight != "attention" or args.part != "all" or unsupported:
        raise ArgumentError(
            "encoder–decoders have the head and model views of the attention weights, over all their tokens: "
            "leave out --view neuron, --weight, --part, --window, --split and --query"
        )
    stacks = STACKS if args.stack == "all" else (args.stack,)
    if len(stacks) > 1 and any(path.suffix.lower() != ".html" for path in figures):
        raise ArgumentError("an SVG or PNG holds one attention: choose it with --stack encoder, decoder or cross")
    run_ = seq2seq.run_pair(source, args.target, max_new_tokens=args.generate)
    views = seq2seq_views(run_, stacks, layers=[args.layer] if args.view == "head" else layers, heads=heads,
                          top_k=args.top_k, aggregate=args.aggregate)  # fmt: skip
    draw = head_view_figure if args.view == "head" else model_view_figure
    drawn = []
    for name, view in views:
        figure = draw(view)
        figure.update_layout(title_text=f"{name}: {figure.layout.title.text}")
        drawn.append(figure)
    table = pd.concat([attention_table(view).assign(attention=name.lower()) for name, view in views], ignore_index=True)
    print(f"Model   {seq2seq.info.name} (encoder–decoder: {seq2seq.info.encoder_layers} encoder and "
          f"{seq2seq.info.n_layers} decoder layers x {seq2seq.info.n_heads} heads)")  # fmt: skip
    print(f"Source  {run_.n_source} tokens")
    print(f"Target  {run_.n_decoder - 1} tokens{' (written by the model)' if args.target is None else ''}: "
          f"{''.join(run_.decoder_str_tokens[1:])!r}")  # fmt: skip
    _print_strongest(table, args.view)
    title = title_text(seq2seq.info.name)
    for path in figures:
        if len(drawn) > 1:
            HtmlPage(drawn, title, [name for name, _ in views]).save(path)
        else:
            save_figure(drawn[0], path, title=f"{title} · {drawn[0].layout.title.text}", **size)
        print(f"Figure written to {path}.")
    if args.csv is not None:
        save_table(table, args.csv)
        print(f"Numbers written to {args.csv} (CSV).")
    return 0


def _checked_outputs(args: argparse.Namespace) -> list[Path]:
    """Figure paths, with their suffixes and folders checked before anything is loaded."""
    figures = []
    for flag, suffix in _FIGURE_FLAGS:
        path = getattr(args, flag)
        if path is None:
            continue
        if path.suffix.lower() != suffix:
            raise ArgumentError(f"--{flag} {path}: the file name must end in {suffix}")
        figures.append(check_writable(path))
    if args.csv is not None:
        if args.csv.suffix.lower() != ".csv":
            raise ArgumentError(f"--csv {args.csv}: the file name must end in .csv")
        check_writable(args.csv)
    return figures


def _indices(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ArgumentError(f"{flag} takes comma-separated integers, e.g. 0,3,5 (got {text!r})") from None


def _build(run_: "Run", args: argparse.Namespace, layers, heads) -> tuple[object, "pd.DataFrame"]:
    """The figure and its numbers as a table, for the chosen view."""
    from llm_flow.figures.attention import head_view_figure, model_view_figure, neuron_view_figure
    from llm_flow.views.attention import attention_table, attention_view, token_window
    from llm_flow.views.attention_scores import neuron_table, neuron_view

    window = token_window(run_, args.query, args.window) if args.window else None
    if args.view == "neuron":
        view = neuron_view(run_, args.layer, args.head, -1 if args.query is None else args.query, window, args.top_k)
        return neuron_view_figure(view), neuron_table(view)
    view = attention_view(
        run_, layers=[args.layer] if args.view == "head" else layers, heads=heads, weighting=args.weight,
        window=window, top_k=args.top_k, aggregate=args.aggregate, split=args.split, part=args.part,
    )  # fmt: skip
    if args.view == "head":
        table = attention_table(view)
        if args.query is None:
            return head_view_figure(view), table
        focus = run_.position(args.query)  # only this query's lines, and only its rows
        return head_view_figure(view, focus=focus), table[table["query"] == focus]
    return model_view_figure(view), attention_table(view)


def _print_strongest(table: "pd.DataFrame", view: str, count: int = 8) -> None:
    if view == "neuron":
        print("Sources by softmax weight (position, token, q.k, score, weight):")
        for row in table.nlargest(count, "softmax").itertuples():
            print(f"  {row.source:>5} {row.token!r:<16} {row.dot:9.3f} {row.score:9.3f} {row.softmax:8.4f}")
        gap = (table["softmax"] - table["model_weight"]).abs().max()
        print(f"Check   the softmax equals the weights the model used to {gap:.1g}")
        return
    print("Strongest links (layer, head, query -> source, weight):")
    for row in table.nlargest(count, "weight").itertuples():
        print(f"  L{row.layer:<3} {row.head:<16} {row.query:>5} {row.query_token!r:<14} -> "
              f"{row.source:>5} {row.source_token!r:<14} {row.weight:.4g}")  # fmt: skip

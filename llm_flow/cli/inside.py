"""``llm-flow inside``: one prediction walked through the model stage by stage, with its real numbers
(the app's Inside page), as one standalone HTML page and a summary on the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_flow.validation import INSIDE_WINDOW, check_count, check_sampling, check_seed
from llm_flow.cli.common import add_model_arguments, check_writable, load, prompt_or_default
from llm_flow.config import Config
from llm_flow.errors import ArgumentError

def register(commands) -> None:
    parser = commands.add_parser(
        "inside", help="walk one prediction through the model stage by stage, with its real numbers (one HTML page)"
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="text to analyse (default: the first configured prompt)")
    parser.add_argument("--token", type=int, default=-1,
                        help="the position whose next-token prediction is walked through (default: -1, the last)")
    parser.add_argument("--layer", type=int, help="the block shown stage by stage (default: the middle layer)")
    parser.add_argument("--head", type=int, default=0, help="the attention head shown step by step (default: 0)")
    parser.add_argument("--window", type=int, default=INSIDE_WINDOW,
                        help=f"matrices show this many tokens around --token (default: {INSIDE_WINDOW})")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling stage: 0 is greedy (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="sampling stage: keep the k most likely tokens; 0 is off")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling stage: nucleus size; 1 is off")
    parser.add_argument("--seed", type=int, default=0, help="sampling stage: the seed of the draw shown (default: 0)")
    parser.add_argument("--html", type=Path,
                        help="write the walk-through as one standalone HTML page (opens offline, every stage expanded)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    if args.html is not None:
        if args.html.suffix.lower() not in (".html", ".htm"):
            raise ArgumentError(f"--html {args.html}: the file name must end in .html")
        check_writable(args.html)
    check_count(args.window, "--window")
    temperature, top_k, top_p = check_sampling(args.temperature, args.top_k, args.top_p)
    check_seed(args.seed)
    if args.layer is not None and args.layer < 0 or args.head < 0:
        raise ArgumentError("--layer and --head count from 0")
    prompt = prompt_or_default(args.prompt, config)
    from llm_flow.export import save_html
    from llm_flow.figures.inside import walkthrough_page
    from llm_flow.views.inside import overview, walkthrough
    from llm_flow.views.sampling import SamplingSettings
    from llm_flow.views.tokens import display_token

    model = load(args, config)
    run_ = model.run(prompt)
    layer = model.info.n_layers // 2 if args.layer is None else args.layer
    settings = SamplingSettings(temperature, top_k, top_p)
    walk = walkthrough(run_, layer, args.head, args.token, args.window, settings, args.seed)
    flow = overview(run_, walk.position, args.window)
    print(f"Model   {model.info.name} ({model.info.architecture}, {model.info.n_layers} layers)")
    print(f"Token   {walk.position} {display_token(walk.token)!r} of {run_.n_tokens}: the model predicts "
          f"{display_token(flow.prediction)!r} ({flow.probability:.1%})")  # fmt: skip
    print(f"Block   {walk.layer}, head {walk.head}" + (f" (key/value head {walk.kv_head})" if walk.kv_head != walk.head else ""))
    for number, stage in enumerate(walk.stages, start=1):
        print(f"{number:>3}. {stage.title}: {stage.notice}")
    if args.html is not None:
        save_html(walkthrough_page(walk, flow, prompt), args.html)
        print(f"Walk-through written to {args.html}.")
    return 0

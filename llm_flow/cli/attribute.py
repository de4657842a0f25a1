"""``llm-flow attribute``: which input tokens made the model produce each token of a
continuation (generated or given), by one attribution method; a summary per step and, on
request, the full result as JSON, CSV or a standalone HTML page."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llm_flow.cli.common import (
    add_model_arguments,
    check_writable,
    end_progress,
    load,
    progress,
    prompt_or_default,
)
from llm_flow.config import Config
from llm_flow.errors import ArgumentError
from llm_flow.wording import probability, step_progress

#: Kept in step with `llm_flow.attribution.METHODS` by a test (that module imports torch).
METHOD_NAMES = ("saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "occlusion",
                "attention", "alti_rollout")  # fmt: skip
OUTPUTS = (".json", ".csv", ".html")


def register(commands) -> None:
    parser = commands.add_parser(
        "attribute", help="input attribution for every token of a continuation",
        description="Attribute each continuation token to the prompt and the continuation before it.",
    )  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="text to continue (default: the first configured prompt)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--continuation", help="the continuation to explain, as text (mind its leading space); "
                        "on an encoder, the one token to explain at the prompt's mask (default: its prediction)")
    target.add_argument("--generate", type=int, metavar="N", help="explain N greedily generated tokens (default: 1)")
    parser.add_argument("--method", default="integrated_gradients",
                        help=f"one of {', '.join(METHOD_NAMES)} (default: integrated_gradients)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, repeatable: n_steps=64, baseline=mean, layer=-1, heads=max, window=4 ...")
    parser.add_argument("--foil", help="contrastive foil token: explain target minus foil (e.g. ' London')")
    parser.add_argument("--function", choices=("probability", "logit"),
                        help="what gradient and occlusion methods explain (default: probability; logit with --foil)")
    parser.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap the prompt in the model's chat template (default: the config entry's chat_template)")
    parser.add_argument("--words", action="store_true", help="aggregate sub-word tokens into words")
    parser.add_argument("--top", type=int, default=5, help="sources listed per step (default: 5)")
    parser.add_argument("--out", type=Path, help="write the result: .json (reloadable), .csv (long table) or .html")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    if args.top < 1:
        raise ArgumentError(f"--top must be at least 1 (got {args.top})")
    if args.out is not None and args.out.suffix.lower() not in OUTPUTS:
        raise ArgumentError(f"--out must end in {', '.join(OUTPUTS)} (got {args.out.name!r})")
    if args.out is not None:
        check_writable(args.out)
    prompt = prompt_or_default(args.prompt, config)
    options = dict(_option(text) for text in args.option)
    from llm_flow.attribution import attribute, get_method

    method = get_method(args.method, **options)  # unknown names and bad options before the model loads
    model = load(args, config)
    entry = config.model(args.model or config.default_model)
    chat = args.chat_template if args.chat_template is not None else bool(entry and entry.chat_template)
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        progress(step_progress(method.label, done, total, time.perf_counter() - started))

    result = attribute(
        model, prompt, method, continuation=args.continuation, generate=args.generate, foil=args.foil,
        function=args.function, chat_template=chat, progress=report,
    )  # fmt: skip
    end_progress()
    if args.words:
        result = result.by_words()
    _print_summary(result, args.top)
    if args.out is not None:
        _write(result, args.out)
        print(f"\nWritten to {args.out}.")
    return 0


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ArgumentError(f"--option takes KEY=VALUE (got {text!r})")
    words = {"true": True, "false": False, "none": None}
    if value.strip().lower() in words:
        return key.strip(), words[value.strip().lower()]
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value


def _print_summary(result, top: int) -> None:
    from llm_flow.views.tokens import display_token

    if result.function is None:
        explained = "the forward pass (no output function)"
    elif result.foil:
        explained = f"the target's {result.function} minus that of the foil {result.foil!r}"
    else:
        explained = f"the target's {result.function}"
    print(f"Method  {result.method} {result.options or ''}".rstrip())
    print(f"Model   {result.model}; explains {explained}")
    targets = "".join(f"[{display_token(t)}]" for t in result.targets)
    if result.position is not None:  # an encoder
        mask = display_token(result.tokens[result.position])
        print(f"Prompt  {result.n_prompt} tokens, every one a source; explained at {mask} (position {result.position}), "
              f"{'its prediction' if result.generated else 'the given token'}: {targets}")  # fmt: skip
    else:
        print(f"Prompt  {result.n_prompt} tokens; continuation {'generated' if result.generated else 'given'}: {targets}")
    for step, token in enumerate(result.targets):
        scores = {name: values[step] for name, values in result.step_scores.items()}
        line = (f"\nStep {step}  {display_token(token)!r}  p={probability(scores['probability'])}  "
                f"logit={scores['logit']:.2f}  entropy={scores['entropy']:.2f}")  # fmt: skip
        if "logit_difference" in scores:
            line += (f"  vs foil: p {probability(scores['foil_probability'])}, "
                     f"logit difference {scores['logit_difference']:.2f}")  # fmt: skip
        if result.deltas is not None:
            line += f"  (IG convergence delta {result.deltas[step]:+.2g})"
        print(line)
        for _, source, score in result.top_sources(step, top):
            print(f"  {display_token(source)!r:<24} {score:+.4f}")


def _write(result, path: Path) -> None:
    if path.suffix.lower() == ".html":
        from llm_flow.figures.attribution import standalone_html

        try:
            path.write_text(standalone_html(result), encoding="utf-8")
        except OSError as exc:
            raise ArgumentError(f"cannot write {path}: {exc.strerror}") from None
    else:
        result.save(path)

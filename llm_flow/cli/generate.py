"""``llm-flow generate``: continue a prompt with the playground's sampling settings and print each
generated token with its probabilities."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_flow.validation import check_sampling, check_seed
from llm_flow.cli.common import add_model_arguments, load, progress, prompt_or_default
from llm_flow.config import Config
from llm_flow.errors import ArgumentError
from llm_flow.wording import plural, probability

if TYPE_CHECKING:
    from llm_flow.models.base import TransparentLlm
    from llm_flow.views.generation import GeneratedToken, Generation


def register(commands) -> None:
    parser = commands.add_parser(
        "generate", help="continue a prompt (temperature, top-k, top-p, seed) and print each token's probabilities"
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="text to continue (default: the first configured prompt)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="how many tokens at most (default: 20)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 is off (default: 0)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="keep the most likely tokens up to this total probability; 1 is off (default: 1.0)")
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible continuation")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    temperature, top_k, top_p = check_sampling(args.temperature, args.top_k, args.top_p)
    check_seed(args.seed)
    if args.max_new_tokens < 1:
        raise ArgumentError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    prompt = prompt_or_default(args.prompt, config)
    from llm_flow.views.generation import generate, start
    from llm_flow.views.sampling import SamplingSettings, seeded_generator

    settings = SamplingSettings(temperature, top_k, top_p)
    model = load(args, config)
    generation = start(model, prompt)
    device = next(model.hf_model.parameters()).device
    seed = "" if settings.greedy else f", seed {args.seed}" if args.seed is not None else ", unseeded"
    print(f"Model     {model.info.name} ({model.info.architecture}, {plural(model.info.n_layers, 'layer')})")
    print(f"Prompt    {plural(len(generation.prompt_ids), 'token')}: {prompt!r}")
    print(f"Sampling  {settings.describe()}{seed}")
    print(f"\n{'#':>3} {'pos':>5}  {'token':<18} {'p drawn':>8} {'p model':>8} {'rank':>5}")
    progress("generating…")
    generation = generate(
        model, generation, args.max_new_tokens, settings, seeded_generator(args.seed, device), on_token=_token_printer()
    )
    _print_ending(model, generation)
    return 0


def _token_printer() -> Callable[["GeneratedToken"], None]:
    """Prints one line per token as soon as it is chosen: "p drawn" is its probability in the
    distribution it was sampled from, "p model" the model's own softmax, rank its place in the logits
    (1: the model's top token)."""
    counter = itertools.count(1)

    def show(token: "GeneratedToken") -> None:
        end = "  (end of sequence)" if token.eos else ""
        print(f"{next(counter):>3} {token.position:>5}  {token.token!r:<18} {probability(token.probability):>8} "
              f"{probability(token.model_probability):>8} {token.rank:>5}{end}", flush=True)  # fmt: skip

    return show


def _print_ending(model: "TransparentLlm", generation: "Generation") -> None:
    from llm_flow.views.generation import STOP_EOS, STOP_LIMIT, round_trips

    n = len(generation.tokens)
    if generation.stop == STOP_EOS:
        reason = "the model ended the text (end-of-sequence token)"
    elif generation.stop == STOP_LIMIT:
        limit, which = model.token_limit()
        reason = f"the text reached {which} of {limit} tokens"
    else:
        reason = "the requested number of tokens"
    print(f"\nStopped   after {plural(n, 'token')}: {reason}.")
    print(f"Text      {generation.text!r}")
    if not round_trips(model, generation):
        print("Note      this text tokenises differently when read again, so an analysis of it sees "
              "other tokens after the first change (see `llm-flow routes --prompt`).")  # fmt: skip

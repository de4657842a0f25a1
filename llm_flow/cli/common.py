"""What several subcommands share: model options, loading with progress, output checks
(``check_writable`` is :func:`llm_flow.export.check_writable`, re-exported here)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from llm_flow.validation import check_prompt_text
from llm_flow.errors import ArgumentError
from llm_flow.export import SCALE_RANGE, SIZE_RANGE, check_figure_size
from llm_flow.export import check_writable  # noqa: F401  (subcommands check outputs first)

if TYPE_CHECKING:
    from llm_flow.config import Config
    from llm_flow.models.base import TransparentLlm


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="configured name, local folder, .gguf file or hub id (default: the config's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (CUDA only)")


def add_figure_size_arguments(parser: argparse.ArgumentParser) -> None:
    """``--width``, ``--height`` and ``--scale`` for a subcommand that writes figures."""
    (low, high), (least, most) = SIZE_RANGE, SCALE_RANGE
    parser.add_argument("--width", type=int,
                        help=f"figure width in pixels, {low}-{high} (default: the figure's own; HTML fills the window)")
    parser.add_argument("--height", type=int, help=f"figure height in pixels, {low}-{high} (default: the figure's own)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help=f"PNG pixels per figure pixel, {least:g}-{most:g} (default: 1; 2 for print)")


def figure_size(args: argparse.Namespace) -> dict:
    """The checked size options, as keyword arguments of :func:`llm_flow.export.save_figure`."""
    check_figure_size(args.width, args.height, args.scale)
    return dict(width=args.width, height=args.height, scale=args.scale)


def load(args: argparse.Namespace, config: "Config") -> "TransparentLlm":
    """The model named by ``--model`` (or the config's default), with llm-flow's progress on
    stderr and none of `transformers`' own bars ("Loading weights", "Writing model shards"):
    one line per step, not a bar per library call."""
    from transformers.utils import logging as transformers_logging

    from llm_flow.models.loading import load_model

    name = args.model or config.default_model
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return load_model(name, device=args.device, dtype=args.dtype, config=config, progress=progress)
    finally:
        end_progress()
        if bars:
            transformers_logging.enable_progress_bar()


def prompt_or_default(prompt: str | None, config: "Config") -> str:
    """``--prompt``, or the first configured prompt; an empty one is refused before any loading."""
    if prompt is None:
        if not config.prompts:
            raise ArgumentError("no --prompt given and the config lists no prompts")
        prompt = config.prompts[0]
    return check_prompt_text(prompt)


def progress(message: str) -> None:
    """On a terminal, each message replaces the last (downloads report every second); in a log,
    one line each."""
    global _progress_line_open
    if sys.stderr.isatty():
        print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)
        _progress_line_open = True
    else:
        print(message, file=sys.stderr, flush=True)


def end_progress() -> None:
    """Close a terminal progress line, so what comes next starts on its own line."""
    global _progress_line_open
    if _progress_line_open:
        print(file=sys.stderr, flush=True)
        _progress_line_open = False


_progress_line_open = False

"""What several subcommands share: model options, loading with progress, output checks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llm_flow.checks import check_prompt_text
from llm_flow.errors import ArgumentError

if TYPE_CHECKING:
    from llm_flow.config import Config
    from llm_flow.models.base import TransparentLlm


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="configured name, local folder, .gguf file or hub id (default: the config's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (CUDA only)")


def load(args: argparse.Namespace, config: "Config") -> "TransparentLlm":
    """The model named by ``--model`` (or the config's default), with progress on stderr."""
    from llm_flow.models.loading import load_model

    name = args.model or config.default_model
    return load_model(name, device=args.device, dtype=args.dtype, config=config, progress=progress)


def prompt_or_default(prompt: str | None, config: "Config") -> str:
    """``--prompt``, or the first configured prompt; an empty one is refused before any loading."""
    if prompt is None:
        if not config.prompts:
            raise ArgumentError("no --prompt given and the config lists no prompts")
        prompt = config.prompts[0]
    return check_prompt_text(prompt)


def check_writable(path: Path | None) -> Path | None:
    """Refuse an output path that cannot be written, before any slow work."""
    if path is None:
        return None
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ArgumentError(f"cannot write {path}: it is a folder; give a file name")
    if not folder.is_dir():
        raise ArgumentError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ArgumentError(f"cannot write {path}: permission denied")
    return path


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

"""GGUF files, converted once to a cached safetensors folder.

transformers can read GGUF directly but dequantising and rebuilding the tokenizer takes tens of
seconds; after one conversion every later load is an ordinary local-folder load (well under a
second for SmolLM2-135M).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from llm_flow.errors import ModelLoadError, ModelNotFoundError
from llm_flow.models.cache import building, cache_dir
from llm_flow.models.local_files import describe_file, is_gguf
from llm_flow.models.progress import Progress, run_reporting

#: The conversion's steps, as reported to the user.
STEPS = (
    "reading the tokenizer",
    "reading and dequantising the weights",
    "writing the weights as safetensors",
    "writing the tokenizer",
)


def converted_folder(gguf_path: Path, progress: Progress | None = None) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) with the GGUF's weights as float32.

    While converting, `progress` hears every second which step is running.
    """
    gguf_path = _checked(gguf_path)
    folder = _cached_folder(gguf_path)
    if (folder / "config.json").is_file():
        return folder
    step = [0]  # index into STEPS of the running step, advanced by the worker

    def reached(index: int) -> None:
        step[0] = index

    def convert() -> None:
        with building(folder) as scratch:
            _convert(gguf_path, scratch, reached)

    def describe(seconds: float) -> str:
        return (
            f"Converting {gguf_path.name} to safetensors (first use only), step {step[0] + 1} of "
            f"{len(STEPS)}: {STEPS[step[0]]}, {seconds:.0f} s"
        )

    run_reporting(convert, describe, progress)
    return folder


def gguf_config(gguf_path: Path) -> PretrainedConfig:
    """The model config a GGUF file describes, read from its metadata (or from its converted
    folder when there is one) without dequantising any weight."""
    gguf_path = _checked(gguf_path)
    folder = _cached_folder(gguf_path)
    if (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(folder)
    try:
        return AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {exc}") from exc


def _checked(gguf_path: Path) -> Path:
    """The file's resolved path, or an error saying what it is instead of a GGUF file."""
    gguf_path = gguf_path.expanduser().resolve()
    if gguf_path.is_dir():
        raise ModelNotFoundError(f"{gguf_path} is a folder, not a GGUF file")
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
    if not is_gguf(gguf_path):
        raise ModelLoadError(
            f"{gguf_path} is not a GGUF file: it is {describe_file(gguf_path)} and does not start "
            "with the GGUF signature. Give a .gguf model file (as llama.cpp writes them)"
        )
    return gguf_path


def _cached_folder(gguf_path: Path) -> Path:
    """Where this file's conversion lives: keyed by path, size and modification time."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "converted" / f"{gguf_path.stem}-{key}"


def _convert(gguf_path: Path, out: Path, reached: Callable[[int], None]) -> None:
    kwargs = {"gguf_file": gguf_path.name}
    try:
        reached(0)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        reached(1)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {exc}") from exc
    # The weights are dequantised now; saving needs the quantisation record gone.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    reached(2)
    model.save_pretrained(out)
    reached(3)
    tokenizer.save_pretrained(out)

"""GGUF files, converted once to a cached safetensors folder.

transformers can read GGUF directly but dequantising and rebuilding the tokenizer takes tens of
seconds; after one conversion every later load is an ordinary local-folder load (well under a
second for SmolLM2-135M).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_flow.errors import ModelLoadError, ModelNotFoundError
from llm_flow.models.cache import building, cache_dir
from llm_flow.models.packaged import Progress


def converted_folder(gguf_path: Path, progress: Progress | None = None) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) with the GGUF's weights as float32."""
    gguf_path = gguf_path.expanduser().resolve()
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "converted" / f"{gguf_path.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    if progress:
        progress(f"Converting {gguf_path.name} to safetensors (first use only, about a minute)…")
    with building(folder) as scratch:
        _convert(gguf_path, scratch)
    return folder


def _convert(gguf_path: Path, out: Path) -> None:
    kwargs = {"gguf_file": gguf_path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {exc}") from exc
    # The weights are dequantised now; saving needs the quantisation record gone.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

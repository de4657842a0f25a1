"""What a local path holds, checked before transformers sees it.

transformers reports a file that is not a model, or a folder missing its weights or tokenizer,
with messages about its own internals ("Couldn't instantiate the backend tokenizer from one of:
."). These checks name what is there and what a model needs instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_flow.errors import ModelLoadError, ModelNotFoundError

#: What llm-flow can load from disk, for messages.
EXPECTED = (
    "a Hugging Face model folder (config.json, weights such as model.safetensors, and a "
    "tokenizer such as tokenizer.json) or a .gguf file"
)
GGUF_MAGIC = b"GGUF"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "*.safetensors")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER = (
    "tokenizer.json", "tokenizer.model", "vocab.*", "*.tiktoken", "tekken.json",
    "spiece.model", "sentencepiece*.model",
)  # fmt: skip
_WEIGHTS_HELP = "model.safetensors or pytorch_model.bin, or a sharded model.safetensors.index.json with its shards"
_TOKENIZER_HELP = "tokenizer.json, or tokenizer.model / vocab files"
_MODEL_PART_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt"}


def check_model_folder(folder: Path) -> None:
    """Raise unless `folder` has config.json, weights and a tokenizer (all shards present)."""
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{folder} is a folder but not a Hugging Face model folder (it has no config.json): "
            f"give {EXPECTED}"
        )
    missing = []
    weights_problem = _weights_problem(folder)
    if weights_problem:
        missing.append(weights_problem)
    if not _has_any(folder, _TOKENIZER):
        missing.append(f"no tokenizer ({_TOKENIZER_HELP})")
    if missing:
        raise ModelLoadError(
            f"{folder} is not a complete model folder: it has config.json but {' and '.join(missing)}. "
            "A model folder needs config.json, the weights and the tokenizer files (what "
            "save_pretrained writes for the model and its tokenizer)"
        )


def not_a_model_file(path: Path) -> ModelNotFoundError:
    """The error for an existing file that is neither a .gguf file nor a model folder."""
    kind = describe_file(path)
    if path.suffix.lower() in _MODEL_PART_SUFFIXES and (path.parent / "config.json").is_file():
        return ModelNotFoundError(
            f"{path} is {kind} inside a model folder: give the folder {path.parent} instead"
        )
    if is_gguf(path):
        return ModelNotFoundError(f"{path} is {kind}: rename it to end in .gguf")
    return ModelNotFoundError(f"{path} is {kind}, not a model: give {EXPECTED}")


def is_gguf(path: Path) -> bool:
    """Whether the file starts with the GGUF signature."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def describe_file(path: Path) -> str:
    """'a text file (12 bytes)', 'a zip archive (3.1 MB)', ... from the name and first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
        size = path.stat().st_size
    except OSError as exc:
        return f"a file that cannot be read ({exc.strerror or exc})"
    if head.startswith(GGUF_MAGIC):
        kind = "a GGUF file"
    elif head.startswith(b"PK\x03\x04"):
        kind = "a zip archive"
    elif path.suffix.lower() in (".safetensors", ".bin", ".pt", ".pth"):
        kind = "a weights file"
    elif path.suffix.lower() == ".json":
        kind = "a JSON file"
    elif not head:
        kind = "an empty file"
    elif _is_text(head):
        kind = "a text file"
    else:
        kind = "a binary file"
    return f"{kind} ({_size(size)})"


def _weights_problem(folder: Path) -> str | None:
    for index_name in _WEIGHT_INDEXES:
        index = folder / index_name
        if index.is_file():
            return _missing_shards(index)
    return None if _has_any(folder, _WEIGHTS) else f"no weights ({_WEIGHTS_HELP})"


def _missing_shards(index: Path) -> str | None:
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"an unreadable weights index {index.name}"
    missing = sorted(shard for shard in shards if not (index.parent / shard).is_file())
    if not missing:
        return None
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return f"not all the weight shards its {index.name} lists (missing {missing[0]}{more})"


def _has_any(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(path.is_file() for pattern in patterns for path in folder.glob(pattern))


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # a multi-byte character cut at the end of the sample
    return b"\x00" not in head


def _size(n_bytes: int) -> str:
    if n_bytes < 1000:
        return f"{n_bytes} bytes"
    value, unit = n_bytes / 1e3, "kB"
    for larger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1e3, larger
    return f"{value:.1f} {unit}"

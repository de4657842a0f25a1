"""What the app does once per server process rather than once per session."""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_imports() -> None:
    """Move every object alive now to the garbage collector's permanent generation, once.

    Called after the pages' imports (about 560,000 tracked objects: torch, transformers,
    TransformerLens, Streamlit, plotly, pandas), which live as long as the process: a full
    collection can free none of them, yet walks them all, 1-2 s on a busy 2-core machine. Full
    collections came every few seconds while sessions worked, and several in a row when the
    server stopped, so SIGTERM took 15-45 s whatever the number of sessions (689,000 objects with
    one, 701,000 with eight). Nothing of a session is alive yet (no Run, no model), and garbage
    is collected first, so nothing that could be freed is frozen."""
    global _frozen
    with _lock:
        if not _frozen:
            gc.collect()
            gc.freeze()
            _frozen = True

"""Progress of slow first-use steps (download, conversion), reported every second.

A step that is silent for half a minute looks like a hang. The work runs in a worker thread and
the calling thread reports, because a UI (Streamlit's status box) may only be written from the
thread that called llm-flow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

#: Receives one human-readable message per report.
Progress = Callable[[str], None]
#: Seconds between two reports of a running step.
REPORT_EVERY = 1.0

T = TypeVar("T")


def run_reporting(
    work: Callable[[], T],
    describe: Callable[[float], str],
    progress: Progress | None,
    every: float = REPORT_EVERY,
) -> T:
    """Return `work()`, calling ``progress(describe(seconds_so_far))`` at once and every `every` s.

    If `progress` raises (Streamlit stops a script this way when the user reruns it), the
    reports stop but the work still finishes before the exception is re-raised, so a download
    or conversion is not thrown away half-done. Ctrl-C (KeyboardInterrupt) stops at once.
    """
    if progress is None:
        return work()
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="llm-flow-work", daemon=True)
    start = time.monotonic()
    worker.start()
    try:
        progress(describe(0.0))
        while True:
            worker.join(every)
            if not worker.is_alive():
                break
            progress(describe(time.monotonic() - start))
    except KeyboardInterrupt:
        raise  # the user wants out now; the daemon worker ends with the process
    except BaseException:
        worker.join()
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]

"""Peak resident memory of one phase of a benchmark.

A sampling thread reads ``/proc/self/statm`` every ~2 ms; a phase's peak is the highest RSS seen
while it ran minus the RSS when it started. Before each phase freed heap memory is handed back to
the OS (``malloc_trim``), so the starting RSS is what is really live and memory the phase reuses
from earlier phases shows up as growth. (A fixed glibc mmap threshold would do the same but makes
the forward pass ~30% slower through page faults, so it would flatter every ratio.)
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
INTERVAL_S = 0.002
DESCRIPTION = (
    "peak memory = highest RSS during the phase minus RSS at its start "
    "(/proc/self/statm sampled every 2 ms; gc + malloc_trim before each phase)"
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def release_freed_memory() -> None:
    """Garbage-collect and return free heap pages to the OS, so the next baseline is honest."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: baselines are a little less exact
        pass


@dataclass
class Measurement:
    seconds: float
    peak_bytes: int
    result: Any = None


class _PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_bytes()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(INTERVAL_S):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, rss_bytes())


def measure(phase: Callable[[], Any]) -> Measurement:
    """Run `phase` once: wall time, peak RSS increase, and what it returned."""
    release_freed_memory()
    start_rss = rss_bytes()
    sampler = _PeakSampler()
    sampler.start()
    start = time.perf_counter()
    result = phase()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    return Measurement(seconds, peak - start_rss, result)

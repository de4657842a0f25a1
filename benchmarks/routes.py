"""Benchmark: forward pass, our routes and contributions, and the naive reference, on one machine.

    python -m benchmarks.routes            # GPT-2-small and SmolLM2-135M shapes, T = 64 .. 4096, and 16,384 (SmolLM2)
    python -m benchmarks.routes --quick    # T = 64 and 256 only

Each (model, T) case runs in a fresh child process (clean memory numbers). In it, each trial
times a plain `transformers` forward pass with SDPA attention (same weights, last token's logits
only) and then `model.run`, alternating, so both see the same machine load. The naive reference
runs in another child, with a time limit, and is skipped where its decomposition alone would not
fit in memory. Prints a table, checks the project's targets, and writes the table as CSV and JSON
into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import memory

RESULTS = Path(__file__).resolve().parent / "results"
FULL_LENGTHS = (64, 256, 1024, 4096, 16384)
QUICK_LENGTHS = (64, 256)
#: Cases only worth running on one shape: the long prompt on the long-context model.
LONG_ONLY = {16384: "smollm2-135m"}
#: Contributions of every position cost T² rows per layer: measured up to this length.
ALL_POSITIONS_MAX = 4096
#: The naive reference (minutes at T = 1024) runs up to this length.
NAIVE_MAX = 1024
THRESHOLD = 0.04
NAIVE_TIME_LIMIT_S = 600
NAIVE_MEMORY_BUDGET = 20 * 2**30  # of the machine's 24 GiB; the model and the run need the rest
MIB = 2**20


# --- child processes: one case each -----------------------------------------------------------


def ours_case(shape: str, n_tokens: int, repeat: int) -> dict:
    """Plain SDPA forward and `model.run`, alternating; routes for the last token on the fresh
    run; contributions of all positions (up to ALL_POSITIONS_MAX)."""
    import torch

    import llm_flow
    from benchmarks import models
    from llm_flow.models.memory import estimate_peak_bytes, estimate_run_bytes

    model = models.load(shape)
    plain = models.hf_model(shape, attention="sdpa")
    _warm_up(model)
    prompt = models.prompt(n_tokens, model.info.vocab_size)
    ids = torch.tensor([model.encode(prompt)])
    _plain_forward(plain, ids[:, :16])
    trials = []
    for _ in range(repeat):
        baseline = memory.measure(lambda: _plain_forward(plain, ids))
        forward = memory.measure(lambda: model.run(prompt))
        run = forward.result
        assert run.n_tokens == n_tokens, "the prompt must be exactly T tokens"
        run_mib = run.nbytes / MIB
        routes = memory.measure(lambda: llm_flow.build_graph(run, -1, THRESHOLD))
        graph = routes.result
        routes.result = None
        trial = {
            "plain_forward": _phase(baseline),
            "forward": _phase(forward) | {"run_mib": run_mib},
            "routes": _phase(routes) | {"nodes": graph.number_of_nodes(), "edges": graph.number_of_edges()},
        }
        if n_tokens <= ALL_POSITIONS_MAX:
            trial["all_positions"] = _phase(memory.measure(lambda: _all_positions(run)))
        trials.append(trial)
        del run, forward, graph
    estimates = {
        "estimate_run_mib": estimate_run_bytes(model.info, n_tokens) / MIB,
        "estimate_peak_mib": estimate_peak_bytes(model.info, n_tokens) / MIB,
        "recomputed_rows": model.info.recomputed_rows,
    }
    return _best(trials) | estimates | {"process_peak_mib": _process_peak_mib(), "kernel": _kernel_name()}


def _plain_forward(plain, ids) -> None:
    """What a user of `transformers` runs: one forward pass, SDPA attention, the next token's logits."""
    import torch

    with torch.inference_mode():
        plain(ids, logits_to_keep=1)


def naive_case(shape: str, n_tokens: int) -> dict:
    """The naive reference on a fresh run, and whether its routes equal ours."""
    import llm_flow
    from benchmarks import models, naive

    model = models.load(shape)
    run = model.run(models.prompt(n_tokens, model.info.vocab_size))
    measured = memory.measure(lambda: naive.route_graph(run, -1, THRESHOLD))
    reference = measured.result
    measured.result = None
    ours = llm_flow.build_graph(run, -1, THRESHOLD)
    return {
        "naive": _phase(measured) | {"nodes": reference.number_of_nodes(), "edges": reference.number_of_edges()},
        "same_routes": same_routes(ours, reference),
        "process_peak_mib": _process_peak_mib(),
    }


def same_routes(ours, reference, tolerance: float = 1e-4) -> bool:
    """Same edges, same weights (to `tolerance`)."""
    if set(ours.edges) != set(reference.edges):
        return False
    return all(abs(ours.edges[e]["weight"] - reference.edges[e]["weight"]) <= tolerance for e in ours.edges)


def _all_positions(run) -> int:
    """Every layer's attention and FFN contributions for every position; each layer's tensors are
    dropped before the next (keeping all would be n_layers x T x T x heads floats)."""
    import llm_flow

    for layer in range(run.n_layers):
        llm_flow.attention_contributions(run, layer)
        llm_flow.ffn_contributions(run, layer)
    return run.n_layers


def _warm_up(model) -> None:
    """Compile the kernels and touch every code path once, outside the measurements."""
    import llm_flow
    from benchmarks import models

    run = model.run(models.prompt(16, model.info.vocab_size))
    llm_flow.build_graph(run, -1, THRESHOLD)
    _all_positions(run)


def _phase(measured: memory.Measurement) -> dict:
    return {"seconds": measured.seconds, "peak_mib": measured.peak_bytes / MIB}


def _best(trials: list[dict]) -> dict:
    """Per phase, the median time (the machine is shared; plain and ours alternate, so the median
    of each sees the same load) and the largest peak memory (memory is not disturbed by other
    processes; stay conservative)."""
    best = {}
    for phase in trials[0]:
        runs = sorted((t[phase] for t in trials), key=lambda p: p["seconds"])
        best[phase] = runs[len(runs) // 2] | {"peak_mib": max(p["peak_mib"] for p in runs)}
    return best


def _process_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _kernel_name() -> str:
    from llm_flow.routes import proximity

    method = os.environ.get(proximity.METHOD_ENV, "auto")
    return "numba" if method == "auto" else method


# --- the parent: run every case, print and save ------------------------------------------------


def run_child(args: list[str], timeout: float | None) -> dict | str:
    """Run one case in a fresh interpreter; its JSON result, or why there is none."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [sys.executable, "-m", "benchmarks.routes", *args, "--result-file", str(out)]
    try:
        proc = subprocess.run(command, timeout=timeout, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return f"failed (exit {proc.returncode}: {tail})"
        return json.loads(out.read_text())
    except subprocess.TimeoutExpired:
        return f"skipped: did not finish within {timeout / 60:.0f} min"
    finally:
        out.unlink(missing_ok=True)


def naive_skip_reason(shape: str, n_tokens: int) -> str | None:
    from benchmarks import naive
    from benchmarks.models import DIMENSIONS

    need = naive.estimated_bytes(n_tokens, **DIMENSIONS[shape])
    if need > NAIVE_MEMORY_BUDGET:
        return f"skipped: would need ~{need / 2**30:.0f} GiB (budget {NAIVE_MEMORY_BUDGET / 2**30:.0f} GiB)"
    return None


def trials(n_tokens: int, repeat: int | None) -> int:
    """Median of 3 on this shared machine (plain and ours alternating), one trial at T = 16,384."""
    if repeat is not None:
        return repeat
    return 3 if n_tokens <= 4096 else 1


def run_case(shape: str, n_tokens: int, repeat: int | None, naive_max: int = NAIVE_MAX) -> dict:
    started = time.perf_counter()
    ours = run_child(["--case", shape, str(n_tokens), "--repeat", str(trials(n_tokens, repeat))], timeout=None)
    skip = f"skipped: T > {naive_max}" if n_tokens > naive_max else naive_skip_reason(shape, n_tokens)
    naive = skip or run_child(["--naive-case", shape, str(n_tokens)], timeout=NAIVE_TIME_LIMIT_S)
    print(f"  {shape} T={n_tokens}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return {"model": shape, "tokens": n_tokens, "trials": trials(n_tokens, repeat), "ours": ours, "naive": naive}


def table_rows(cases: list[dict]) -> list[dict]:
    """One row per (model, T, phase) with the ratios the targets are stated in."""
    rows = []
    for case in cases:
        ours, naive = case["ours"], case["naive"]
        base = {"model": case["model"], "T": case["tokens"]}
        if isinstance(ours, str):
            rows.append(base | {"phase": "ours", "note": ours})
        else:
            forward = ours["forward"]
            naive_phase = naive["naive"] if isinstance(naive, dict) else None
            plain = ours["plain_forward"]
            rows.append(base | _row("plain transformers forward (SDPA)", plain, plain, None))
            estimate = f"peak estimate {ours['estimate_peak_mib']:.0f} MiB ({ours['estimate_peak_mib'] / forward['peak_mib'] - 1:+.0%})"
            rows.append(base | _row("forward pass (model.run)", forward, plain, None) | {"note": estimate})
            for phase, label in (("routes", "ours: build_graph(run, -1)"), ("all_positions", "ours: contributions, all positions")):
                if phase in ours:
                    rows.append(base | _row(label, ours[phase], forward, naive_phase if phase == "routes" else None))
        if isinstance(naive, dict):
            note = "same routes as ours" if naive["same_routes"] else "ROUTES DIFFER FROM OURS"
            forward = ours["forward"] if isinstance(ours, dict) else None
            rows.append(base | _row("naive reference (routes)", naive["naive"], forward, None) | {"note": note})
        else:
            rows.append(base | {"phase": "naive reference (routes)", "note": naive})
    return rows


def _row(label: str, phase: dict, forward: dict | None, naive: dict | None) -> dict:
    row = {"phase": label, "seconds": phase["seconds"], "peak_mib": phase["peak_mib"]}
    if forward is not None:
        row["time_vs_forward"] = phase["seconds"] / forward["seconds"]
        row["mem_vs_forward"] = phase["peak_mib"] / max(forward["peak_mib"], 1e-9)
    if naive is not None:
        row["time_vs_naive"] = phase["seconds"] / naive["seconds"]
        row["mem_vs_naive"] = phase["peak_mib"] / max(naive["peak_mib"], 1e-9)
        row["note"] = f"{naive['seconds'] / phase['seconds']:.0f}x faster than naive"
    if "edges" in phase:
        row["graph"] = f"{phase['nodes']}n/{phase['edges']}e"
    return row


COLUMNS = (
    ("model", "model", "{}"),
    ("T", "T", "{}"),
    ("phase", "phase", "{}"),
    ("seconds", "time s", "{:.3f}"),
    ("peak_mib", "peak MiB", "{:.0f}"),
    ("time_vs_forward", "time/fwd", "{:.3f}"),
    ("mem_vs_forward", "mem/fwd", "{:.3f}"),
    ("time_vs_naive", "time/naive", "{:.5f}"),
    ("mem_vs_naive", "mem/naive", "{:.4f}"),
    ("graph", "graph", "{}"),
    ("note", "note", "{}"),
)


def format_table(rows: list[dict]) -> str:
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS])
    widths = [max(len(line[k]) for line in cells) for k in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def check_targets(cases: list[dict]) -> list[dict]:
    """The issue's targets, each with the measurement it is judged on."""
    by_key = {(c["model"], c["tokens"]): c for c in cases}
    checks = []

    def ours(model, tokens):
        case = by_key.get((model, tokens))
        return case["ours"] if case and isinstance(case["ours"], dict) else None

    gpt2 = ours("gpt2-small", 1024)
    if gpt2:
        fwd, routes, every = gpt2["forward"], gpt2["routes"], gpt2["all_positions"]
        checks += [
            _check("GPT-2 shape T=1024: routes time <= 1.5x forward", routes["seconds"] / fwd["seconds"], 1.5),
            _check(
                "GPT-2 shape T=1024: routes peak memory <= 2x forward", routes["peak_mib"] / fwd["peak_mib"], 2.0
            ),
            _check("GPT-2 shape T=1024: all positions <= 4x forward", every["seconds"] / fwd["seconds"], 4.0),
        ]
    for model in ("gpt2-small", "smollm2-135m"):
        for tokens in (1024, 4096):
            result = ours(model, tokens)
            if result:
                ratio = result["forward"]["seconds"] / result["plain_forward"]["seconds"]
                checks.append(_check(f"{model} T={tokens}: model.run <= 1.2x plain SDPA forward", ratio, 1.2))
    for (model, tokens), case in sorted(by_key.items()):
        result = ours(model, tokens)
        if result and tokens >= 1024:
            error = abs(result["estimate_peak_mib"] / result["forward"]["peak_mib"] - 1)
            checks.append(_check(f"{model} T={tokens}: peak estimate within 15% of measured forward peak", error, 0.15))
    long_run = ours("smollm2-135m", 16384)
    if (("smollm2-135m", 16384)) in by_key:
        peak = long_run["process_peak_mib"] / 1024 if long_run else float("inf")
        checks.append(_check("smollm2-135m T=16384: process peak GiB <= 12", peak, 12.0))
        if long_run:
            ratio = long_run["routes"]["seconds"] / long_run["forward"]["seconds"]
            checks.append(_check("smollm2-135m T=16384: routes for the last token <= 0.2x forward", ratio, 0.2))
    checks.append(_check("Llama-3.2-1B shape, bfloat16, T=32768: predicted weights + peak GiB <= 24", _llama_1b_at_32k(), 24.0))
    for model in ("gpt2-small", "smollm2-135m"):
        case = by_key.get((model, 4096))
        if case:
            result = case["ours"]
            peak = result["process_peak_mib"] / 1024 if isinstance(result, dict) else float("inf")
            checks.append(_check(f"{model} T=4096 completes within 24 GiB (process peak GiB)", peak, 24.0))
        case = by_key.get((model, 256))
        if case and isinstance(case["ours"], dict) and isinstance(case["naive"], dict):
            speedup = case["naive"]["naive"]["seconds"] / case["ours"]["routes"]["seconds"]
            checks.append(_check(f"{model} T=256: routes >= 50x faster than naive", speedup, 50.0, at_least=True))
    return checks


def _llama_1b_at_32k() -> float:
    """Weights plus `estimate_peak_bytes` of a 32,768-token run of Llama-3.2-1B's shape in
    bfloat16 (from its published config; rows rebuilt from queries and keys), in GiB."""
    from benchmarks.models import llama_1b_config
    from llm_flow.models.memory import estimate_peak_bytes
    from llm_flow.models.sizing import info_from_config

    info = info_from_config(llama_1b_config(), "Llama-3.2-1B", dtype="bfloat16")
    return (info.n_params * 2 + estimate_peak_bytes(info, 32768)) / 2**30


def _check(name: str, value: float, limit: float, at_least: bool = False) -> dict:
    met = value >= limit if at_least else value <= limit
    return {"target": name, "value": round(value, 3), "limit": limit, "met": bool(met)}


def machine() -> dict:
    import numba
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "memory_measure": memory.DESCRIPTION,
    }


def save(rows: list[dict], cases: list[dict], checks: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "routes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[key for key, _, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    document = {"machine": machine(), "threshold": THRESHOLD, "rows": rows, "targets": checks, "cases": cases}
    (out / "routes.json").write_text(json.dumps(document, indent=1))


def footer(cases: list[dict]) -> str:
    """How the numbers were taken, under the table."""
    trial_counts = {c["tokens"]: c["trials"] for c in cases}
    counts = ", ".join(f"T={t}: {n}" for t, n in sorted(trial_counts.items()))
    return (
        f"\nMemory: {memory.DESCRIPTION}.\n"
        f"Time: wall clock. Per phase the median of several trials ({counts}), the plain forward and "
        f"model.run alternating in one process, and the largest peak memory, each trial on a fresh run; "
        f"time/fwd of model.run is against the plain SDPA forward, of the other phases against model.run; "
        f"naive: one trial on the same cached activations, its routes checked against ours.\n"
        f"Routes: target = last token, threshold {THRESHOLD}, renormalised. Random weights give small "
        f"routes (graph column); a trained model's are larger, which costs ours only rows it visits."
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case or args.naive_case:
        shape, n_tokens = (args.case or args.naive_case)[0], int((args.case or args.naive_case)[1])
        result = ours_case(shape, n_tokens, args.repeat or 1) if args.case else naive_case(shape, n_tokens)
        Path(args.result_file).write_text(json.dumps(result))
        return
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    print(f"Benchmarking {', '.join(args.models)} at T = {', '.join(map(str, lengths))} ...", file=sys.stderr)
    cases = [
        run_case(shape, n, args.repeat, args.naive_max)
        for shape in args.models for n in lengths if LONG_ONLY.get(n, shape) == shape
    ]  # fmt: skip
    rows, checks = table_rows(cases), check_targets(cases)
    print(format_table(rows))
    print(footer(cases))
    for check in checks:
        verdict = "MET   " if check["met"] else "MISSED"
        print(f"{verdict} {check['target']}: {check['value']} (limit {check['limit']})")
    save(rows, cases, checks, args.out)
    print(f"\nWritten: {args.out / 'routes.csv'}, {args.out / 'routes.json'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from benchmarks.models import SHAPES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.routes", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 64 and 256 only")
    parser.add_argument("--models", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--lengths", nargs="+", type=int, help="prompt lengths (overrides --quick)")
    parser.add_argument("--repeat", type=int, help="trials per case, fastest reported (default 3; 1 at T > 1024)")
    parser.add_argument("--naive-max", type=int, default=NAIVE_MAX, help="longest prompt the naive reference runs on")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--case", nargs=2, metavar=("MODEL", "T"), help=argparse.SUPPRESS)
    parser.add_argument("--naive-case", nargs=2, metavar=("MODEL", "T"), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()

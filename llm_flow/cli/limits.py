"""``llm-flow limits``: what each model needs before it is loaded: weights, a run at each
prompt length, the longest prompt that fits."""

from __future__ import annotations

import argparse
import re

from llm_flow.config import Config
from llm_flow.errors import ArgumentError, LlmFlowError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_DEFAULT_LENGTHS = "256,1024,4096"


def register(commands) -> None:
    parser = commands.add_parser(
        "limits", help="memory each model needs (weights, runs, longest prompt) without loading it"
    )
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="configured names, folders, .gguf files or hub ids (default: every configured model)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    parser.add_argument("--device", default="cpu", help="whose free memory is the budget: cpu or cuda (default: cpu)")
    parser.add_argument("--tokens", default=_DEFAULT_LENGTHS,
                        help=f"prompt lengths to size, comma-separated (default: {_DEFAULT_LENGTHS})")
    parser.add_argument("--memory", help="the budget instead of the memory free now, e.g. 24GiB or 80GB")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    lengths = parse_lengths(args.tokens)
    budget = parse_bytes(args.memory) if args.memory else None
    if args.dtype not in ("float32", "bfloat16", "float16"):
        raise ArgumentError(f"unknown dtype {args.dtype!r}: use float32, bfloat16 or float16")

    from llm_flow.models.loading import model_config
    from llm_flow.models.memory import available_bytes, format_bytes
    from llm_flow.models.sizing import footprint, info_from_config

    if budget is None:
        budget = available_bytes(args.device)
        print(f"Budget: {format_bytes(budget)}, the memory available on {args.device} now (--memory to choose)")
    else:
        print(f"Budget: {format_bytes(budget)}")
    print(f"Peak memory of one run (weights not included), {args.dtype}:")
    header = ["model", "parameters", "weights", *(f"{t:,} tokens" for t in lengths), "longest prompt"]
    rows, failures = [], []
    for name in args.models or list(config.models):
        try:
            name, hf_config = model_config(name, config=config)
            info = info_from_config(hf_config, name, dtype=args.dtype, device=args.device)
        except LlmFlowError as exc:
            failures.append(f"{name}: {exc}")
            continue
        fp = footprint(info, lengths, budget)
        longest = (
            "weights do not fit" if not fp.fits_weights
            else f"{fp.longest:,}" + (" (its context)" if fp.longest == info.n_ctx else "")
        )
        rows.append([
            name, f"{info.n_params / 1e6:,.1f} M", format_bytes(fp.weights),
            *(format_bytes(fp.runs[t][1]) for t in lengths), longest,
        ])  # fmt: skip
    _print_table(header, rows)
    for line in failures:
        print(f"cannot size {line}")
    return 0 if rows or not failures else 2


def parse_lengths(text: str) -> list[int]:
    """``"256,1024"`` -> [256, 1024]; each a positive whole number of tokens."""
    lengths = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part.isdigit() or int(part) < 1:
            raise ArgumentError(f"--tokens: {part!r} is not a prompt length; give positive whole numbers, e.g. 256,1024")
        lengths.append(int(part))
    return lengths


def parse_bytes(text: str) -> int:
    """``"24GiB"``, ``"80 GB"``, ``"512MiB"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ArgumentError(f"--memory: {text!r} is not an amount of memory; write e.g. 24GiB, 80GB or 512MiB")
    return int(float(match.group(1)) * _UNITS[unit])


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))

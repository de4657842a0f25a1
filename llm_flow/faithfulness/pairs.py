"""Reading a file of prompt pairs for faithfulness over a set: ``.jsonl``, one JSON object per
line with ``clean``, ``counterfactual``, ``answer`` and ``foil`` (strings), optionally ``id``
and ``task``. A bad file is refused before any model loads, naming the line.

The pairs that ship (config/datasets/pairs_*.jsonl, config/README.md) have this format."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from llm_flow.errors import ArgumentError

FIELDS = ("clean", "counterfactual", "answer", "foil")


@dataclass(frozen=True)
class Pair:
    """One clean prompt, its counterfactual, and the answer and foil tokens the metric compares."""

    pair_id: str
    clean: str
    counterfactual: str
    answer: str
    foil: str
    task: str = ""


def read_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Every pair of a ``.jsonl`` file (blank lines skipped); ids default to line numbers."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise ArgumentError(f"{path}: a pair file is .jsonl (one JSON object per line with {', '.join(FIELDS)})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArgumentError(f"pair file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"cannot read {path}: {exc}") from None
    pairs, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ArgumentError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            pair = _pair(record, number, path)
            if pair.pair_id in seen:
                raise ArgumentError(f"{path}, line {number}: pair id {pair.pair_id!r} appears twice")
            seen.add(pair.pair_id)
            pairs.append(pair)
    if not pairs:
        raise ArgumentError(f"{path} holds no pairs")
    return pairs


def _pair(record: object, number: int, path: Path) -> Pair:
    where = f"{path}, line {number}"
    if not isinstance(record, dict):
        raise ArgumentError(f"{where}: each line must be a JSON object with {', '.join(FIELDS)}")
    missing = [name for name in FIELDS if not isinstance(record.get(name), str) or not record[name]]
    if missing:
        raise ArgumentError(f"{where}: {missing[0]!r} must be a non-empty string")
    pair_id = record.get("id", number)
    if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)):
        raise ArgumentError(f'{where}: "id" must be a string or an integer')
    return Pair(str(pair_id), *(record[name] for name in FIELDS), task=str(record.get("task", "")))

"""Reading a prompt file: ``.txt`` (one per line), ``.jsonl`` (``"text"``), ``.csv`` and
``.parquet`` (a ``text`` column).

A file whose *format* is wrong (missing ``text`` field, invalid JSON line, unknown suffix) is
refused before any model loads, naming the file and the line or row. A prompt whose *text* is
bad (empty, too long) is read as is: it becomes an error row of the results, never a stop.

Ids: an ``id`` field or column when the file has one, otherwise the 1-based line (``.txt``,
``.jsonl``) or row (``.csv``, ``.parquet``) number. With the text's hash they are what a resumed
run recognises as already done.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llm_flow.errors import ArgumentError

SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a dataset: its id (unique in the file) and its text, exactly as read."""

    prompt_id: str
    text: str

    @property
    def text_hash(self) -> str:
        return text_hash(self.text)


def text_hash(text: str) -> str:
    """SHA-256 of the UTF-8 text, first 16 hex digits: enough to notice an edited prompt."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_prompts(source: str | os.PathLike[str] | Iterable[str]) -> list[PromptItem]:
    """The prompts of a file (by suffix), or of a list of strings (ids ``1``, ``2``, ...)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        items = _read_file(path)
        where = str(path)
    else:
        items = [PromptItem(str(number), _as_text(text, f"item {number}")) for number, text in enumerate(source, 1)]
        where = "the prompt list"
    if not items:
        raise ArgumentError(f"{where} holds no prompts")
    _check_unique(items, where)
    return items


def _read_file(path: Path) -> list[PromptItem]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ArgumentError(f"{path}: unknown prompt file type {suffix or '(none)'!r}; use {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ArgumentError(f"prompt file not found: {path}")
    try:
        if suffix == ".parquet":
            return _read_parquet(path)
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArgumentError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ArgumentError(f"cannot read {path}: {exc.strerror or exc}") from None
    if suffix == ".txt":
        # Every line is a prompt, blank ones included (they become error rows), so that ids stay
        # the line numbers a user sees in an editor.
        return [PromptItem(str(number), line) for number, line in enumerate(text.splitlines(), 1)]
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_csv(path, text)


def _read_jsonl(path: Path, text: str) -> list[PromptItem]:
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArgumentError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "text" not in record:
            raise ArgumentError(f'{path}, line {number}: each line must be a JSON object with a "text" field')
        where = f"{path}, line {number}"
        items.append(PromptItem(_as_id(record.get("id"), number, where), _as_text(record["text"], where)))
    return items


def _read_csv(path: Path, text: str) -> list[PromptItem]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    _check_columns(path, reader.fieldnames or [])
    items = []
    for number, row in enumerate(reader, 1):
        where = f"{path}, row {number}"
        items.append(PromptItem(_as_id(row.get("id"), number, where), _as_text(row["text"], where)))
    return items


def _read_parquet(path: Path) -> list[PromptItem]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ArgumentError(f"{path} is not a readable Parquet file: {exc}") from None
    _check_columns(path, table.column_names)
    texts = table.column("text").to_pylist()
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * len(texts)
    return [
        PromptItem(_as_id(pid, number, f"{path}, row {number}"), _as_text(text, f"{path}, row {number}"))
        for number, (pid, text) in enumerate(zip(ids, texts), 1)
    ]


def _check_columns(path: Path, columns: list[str]) -> None:
    if "text" not in columns:
        found = ", ".join(columns) or "none"
        raise ArgumentError(f'{path}: needs a "text" column (columns found: {found})')


def _as_text(value: object, where: str) -> str:
    if value is None:
        return ""  # a missing value is an empty prompt: an error row, not a stop
    if not isinstance(value, str):
        raise ArgumentError(f'{where}: "text" must be a string (got {type(value).__name__})')
    return value


def _as_id(value: object, number: int, where: str) -> str:
    if value is None or value == "":
        return str(number)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise ArgumentError(f'{where}: "id" must be a string or an integer (got {type(value).__name__})')


def _check_unique(items: list[PromptItem], where: str) -> None:
    seen: dict[str, int] = {}
    for number, item in enumerate(items, 1):
        if item.prompt_id in seen:
            raise ArgumentError(
                f"{where}: prompt id {item.prompt_id!r} appears twice (prompts {seen[item.prompt_id]} "
                f"and {number}); ids must be unique so a resumed run knows what is done"
            )
        seen[item.prompt_id] = number

"""The result of an attribution: scores per (target step, source), step scores, and what
produced them; JSON that loads back to an equal result, a long CSV table, and aggregation of
sub-word tokens into words.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llm_flow.display import Displayable
from llm_flow.errors import ArgumentError

if TYPE_CHECKING:
    import plotly.graph_objects as go

FORMAT = "llm-flow attribution"
VERSION = 1


@dataclass(frozen=True, eq=False)
class Attribution(Displayable):
    """Rows are target steps (the continuation's tokens), columns are sources: tokens (or words)
    of the prompt and the continuation before the last token. ``scores[t, c]`` is NaN where step
    t cannot see column c (it lies at or after its target).

    In a notebook: a summary with each step's strongest sources; ``.show()`` draws the heatmap
    with the step scores beside it (as Inseq's ``.show()``), ``.to_frame()`` the long table."""

    model: str
    method: str
    options: dict[str, object]
    function: str | None  # "probability" | "logit" explained (difference with the foil); None: internals
    foil: str | None
    tokens: list[str]  # the whole sequence, prompt + continuation, one string per token
    token_ids: list[int]
    special: list[bool]  # special tokens (BOS, chat markers) start and end words
    n_prompt: int
    spans: list[tuple[int, int]]  # per column: the token positions [start, stop) it covers
    scores: np.ndarray  # [n_steps, n_columns] float64
    step_scores: dict[str, list[float]]  # per step: probability, logit, entropy (+ contrastive)
    deltas: list[float] | None = None  # integrated gradients: convergence delta per step
    level: str = "tokens"  # "tokens" or "words"
    scale: str = "sum"  # "sum" (signed, additive), "norm" (magnitudes) or "share" (rows sum to 1)
    prompt: str = ""  # the prompt as typed (the tokens include a chat template if one was used)
    generated: bool = False  # the continuation was generated greedily (else given as text)
    chat_template: bool = False
    #: An encoder: the mask position whose prediction the one step explains; every input token is
    #: then a source, those after the mask included (the continuation is that one token).
    position: int | None = None
    n_source: int | None = None  # an encoder–decoder: the first n_source tokens are the source

    # --- shape -------------------------------------------------------------------------------

    @property
    def n_steps(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def target_positions(self) -> list[int]:
        """Where each target is predicted for: its own position, an encoder's mask."""
        if self.position is not None:
            return [self.position]
        return list(range(self.n_prompt, len(self.tokens)))

    @property
    def targets(self) -> list[str]:
        return self.tokens[self.n_prompt :]

    @property
    def sources(self) -> list[str]:
        return ["".join(self.tokens[start:stop]) for start, stop in self.spans]

    @property
    def n_prompt_columns(self) -> int:
        return sum(start < self.n_prompt for start, _ in self.spans)

    def step_row(self, step: int) -> np.ndarray:
        """Scores of one step over the columns it can see: [visible columns]."""
        if not -self.n_steps <= step < self.n_steps:
            raise ArgumentError(f"step {step} is out of range: there are {self.n_steps} target tokens")
        step %= self.n_steps
        visible = [c for c, (start, _) in enumerate(self.spans) if start < self.n_prompt + step]
        return self.scores[step, visible]

    def top_sources(self, step: int, k: int = 5) -> list[tuple[int, str, float]]:
        """(column, text, score) of the `k` largest scores of a step, by absolute value."""
        row = self.step_row(step)
        order = np.argsort(-np.abs(row), kind="stable")[:k]
        sources = self.sources
        return [(int(c), sources[c], float(row[c])) for c in order]

    # --- notebook display (llm_flow.display) ------------------------------------------------

    def summary(self) -> dict[str, object]:
        explained = "the forward pass" if self.function is None else f"the target's {self.function}"
        if self.foil is not None and self.function is not None:
            explained += f" minus the foil {self.foil!r}'s"
        steps = pd.DataFrame([
            {"step": step, "target token": token, "probability": self.step_scores["probability"][step],
             "strongest sources": ", ".join(f"{text!r} {score:+.3g}" for _, text, score in self.top_sources(step, 3))}
            for step, token in enumerate(self.targets)
        ])  # fmt: skip
        return {
            "model": self.model,
            "method": f"{self.method} ({self.scale}, {self.level})",
            "explains": explained,
            "prompt": self.prompt or "".join(self.tokens[: self.n_prompt]),
            "continuation": "".join(self.targets) + (" (generated)" if self.generated else ""),
            "steps": steps,
        }

    def figure(self, title: str | None = None) -> "go.Figure":
        from llm_flow.figures.attribution import attribution_figure

        return attribution_figure(self, title)

    # --- words -------------------------------------------------------------------------------

    def by_words(self) -> "Attribution":
        """Columns merged into words (scores summed over a word's visible tokens). A word starts
        at a token beginning with whitespace, after one ending with whitespace (a whitespace-only
        token joins the word after it), at and after a special token, and where the
        continuation starts."""
        if self.level == "words":
            return self
        n_sources = len(self.tokens) - 1
        starts = [p for p in range(n_sources) if self._starts_word(p)]
        spans = [(start, stop) for start, stop in zip(starts, starts[1:] + [n_sources])]
        scores = np.full((self.n_steps, len(spans)), np.nan)
        for column, (start, stop) in enumerate(spans):
            block = self.scores[:, start:stop]
            seen = ~np.isnan(block)
            scores[:, column] = np.where(seen.any(1), np.where(seen, block, 0.0).sum(1), np.nan)
        return replace(self, spans=spans, scores=scores, level="words")

    def _starts_word(self, position: int) -> bool:
        if position in (0, self.n_prompt, self.n_source) or self.special[position] or self.special[position - 1]:
            return True
        text, before = self.tokens[position], self.tokens[position - 1]
        if before.isspace():  # a whitespace-only token (" ", "\n") opens the word that follows
            return False
        return text[:1].isspace() or before[-1:].isspace() or not text

    # --- files -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "method": self.method,
            "options": self.options,
            "function": self.function,
            "foil": self.foil,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "special": self.special,
            "n_prompt": self.n_prompt,
            "spans": [list(span) for span in self.spans],
            "scores": [[_json_float(v) for v in row] for row in self.scores.tolist()],
            "step_scores": self.step_scores,
            "deltas": self.deltas,
            "level": self.level,
            "scale": self.scale,
            "prompt": self.prompt,
            "generated": self.generated,
            "chat_template": self.chat_template,
            "position": self.position,
            "n_source": self.n_source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Attribution":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArgumentError(f"not an llm-flow attribution (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise ArgumentError(f"attribution file version {data.get('version')!r} is not supported (expected {VERSION})")
        try:
            return cls(
                model=data["model"], method=data["method"], options=data["options"],
                function=data["function"], foil=data["foil"], tokens=data["tokens"],
                token_ids=data["token_ids"], special=data["special"], n_prompt=data["n_prompt"],
                spans=[tuple(span) for span in data["spans"]],
                scores=np.array([[np.nan if v is None else v for v in row] for row in data["scores"]],
                                dtype=np.float64).reshape(len(data["scores"]), len(data["spans"])),
                step_scores=data["step_scores"], deltas=data["deltas"], level=data["level"],
                scale=data["scale"], prompt=data["prompt"], generated=data["generated"],
                chat_template=data["chat_template"], position=data.get("position"), n_source=data.get("n_source"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ArgumentError(f"the attribution file is incomplete or malformed ({exc!r})") from None

    def to_frame(self) -> pd.DataFrame:
        """One row per (step, visible source): the long table CSV export writes."""
        records = []
        sources = self.sources
        for step, (position, text) in enumerate(zip(self.target_positions, self.targets)):
            per_step = {name: values[step] for name, values in self.step_scores.items()}
            for column, (start, stop) in enumerate(self.spans):
                if start >= self.n_prompt + step:
                    continue
                records.append({
                    "step": step, "target_position": position, "target": text,
                    "source_start": start, "source_stop": stop, "source": sources[column],
                    "score": self.scores[step, column], **per_step,
                })  # fmt: skip
        return pd.DataFrame.from_records(records)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``.json`` (loads back with :func:`load_attribution`) or ``.csv`` (the long table)."""
        path = Path(path)
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False), encoding="utf-8")
            elif suffix == ".csv":
                self.to_frame().to_csv(path, index=False)
            else:
                raise ArgumentError(f"cannot save an attribution as {suffix or 'a file without suffix'}: use .json or .csv")
        except OSError as exc:
            raise ArgumentError(f"cannot write {path}: {exc.strerror}") from None
        return path


def load_attribution(path: str | os.PathLike[str]) -> Attribution:
    """An attribution saved as JSON, equal to the one saved."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArgumentError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return Attribution.from_dict(data)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value

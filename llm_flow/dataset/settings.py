"""The settings routes over a dataset are built with: light, so the CLI checks them at once."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from llm_flow.validation import check_threshold
from llm_flow.errors import ArgumentError

POSITIONS = ("last", "all")
ENGINES = ("inprocess", "ray")
INSTALL_HINT = 'the Ray engine needs Ray: pip install "llm-flow[scale]"'


@dataclass(frozen=True)
class Settings:
    """Recorded in the results and checked when a run resumes.

    `positions`: the positions explained, ``last`` (one route graph per prompt, for its last
    token) or ``all`` (one per token position). Results made before this name recorded it as
    ``targets``; they are read as ``positions``.
    """

    positions: Literal["last", "all"] = "last"
    threshold: float = 0.04
    renormalize: bool = True

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ArgumentError(f"positions must be 'last' or 'all' (got {self.positions!r})")
        check_threshold(self.threshold)


def check_engine(engine: str, workers: int | None, address: str | None) -> None:
    """Refuse engine options that cannot work, before any model loads."""
    if engine not in ENGINES:
        raise ArgumentError(f"unknown engine {engine!r}: use 'inprocess' or 'ray'")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ArgumentError(f"workers must be a whole number >= 1 (got {workers!r})")
    if engine == "inprocess" and (workers not in (None, 1) or address is not None):
        raise ArgumentError("workers and address are for the Ray engine; the in-process engine runs one model")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ArgumentError(INSTALL_HINT)

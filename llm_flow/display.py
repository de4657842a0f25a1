"""Results that display themselves in a notebook: a cell that ends with one shows a compact
summary table, ``.show()`` draws its interactive figure and ``.to_frame()`` gives its numbers.

``.show()`` goes through plotly's own renderers, so it works wherever plotly does (JupyterLab,
classic Notebook, VS Code, Colab): JupyterLab and VS Code draw plotly's figure type with the
plotly.js their extension ships, the classic Notebook gets plotly.js inline, never from a CDN.
Nothing heavy is imported here: the result classes live in modules that must stay light.
"""

from __future__ import annotations

import html
from abc import ABC, abstractmethod
import numbers
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

#: Rows of a table shown inside a summary (the whole table is `.to_frame()`).
SUMMARY_ROWS = 10


class Displayable(ABC):
    """What every result shown in a notebook provides: `summary` (label -> value, for the table),
    `figure` (the plotly figure) and `to_frame` (the numbers)."""

    @abstractmethod
    def summary(self) -> dict[str, object]: ...

    @abstractmethod
    def figure(self) -> "go.Figure": ...

    @abstractmethod
    def to_frame(self) -> "pd.DataFrame": ...

    def show(self, renderer: str | None = None) -> None:
        """Draw the interactive figure in the notebook (`renderer`: one of plotly's, e.g.
        ``"browser"`` to open it in a web browser)."""
        self.figure().show(renderer=renderer)

    def _repr_html_(self) -> str:
        return summary_html(type(self).__name__, self.summary())


def summary_html(name: str, rows: dict[str, object]) -> str:
    """A two-column table: the result's name, then one row per item. A value may be text, a
    number or a small DataFrame (its first `SUMMARY_ROWS` rows are shown)."""
    body = "".join(f"<tr><th style='text-align: left; vertical-align: top'>{html.escape(label)}</th>"
                   f"<td style='text-align: left'>{_cell(value)}</td></tr>" for label, value in rows.items())  # fmt: skip
    hint = "<code>.show()</code> draws the figure, <code>.to_frame()</code> gives the numbers"
    return (f"<div class='llm-flow-summary'><table><caption style='text-align: left'><b>{html.escape(name)}</b> "
            f"· {hint}</caption><tbody>{body}</tbody></table></div>")  # fmt: skip


def _cell(value: object) -> str:
    if hasattr(value, "to_html"):  # a DataFrame
        shown = value.head(SUMMARY_ROWS).rename(columns=lambda c: _printable(str(c)))
        shown = shown.map(_printable)
        more = f"<br><i>{len(value) - SUMMARY_ROWS} more rows</i>" if len(value) > SUMMARY_ROWS else ""
        return shown.to_html(index=False, border=0, float_format=lambda x: f"{x:.4g}") + more
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{value:.4g}"
    return html.escape(_printable(str(value)))


def _printable(value: object) -> object:
    """Text with control characters written as escapes (tokens can be any byte, and HTML may not
    carry most control characters); other values as they are."""
    if not isinstance(value, str):
        return value
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" else c for c in value)

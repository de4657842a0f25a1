"""Figures as one self-contained HTML page: what BertViz-style views return and show in a cell.

BertViz loads its scripts from a CDN, so its views come out blank behind a firewall. Here every
page embeds plotly.js (once per page) and the figures' own scripts (the head view's hover
isolation), so it draws offline, in any notebook front end that runs a cell's HTML, or saved
to a file and opened in a browser.
"""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path

import plotly.graph_objects as go

from llm_flow.errors import ArgumentError
from llm_flow.export import check_writable, figure_html

HTML_ACTIONS = ("view", "return")


# Tabs: one button per figure, one figure shown at a time (BertViz's encoder / decoder / cross
# switch). Plain DOM, no library. A waiting tab is moved off screen rather than not displayed, so
# plotly lays its figure out (measures its text) as if it were shown.
_SHOWN = "position: static; visibility: visible"
_WAITING = "position: absolute; left: -100000px; top: 0; visibility: hidden"
_TABS_JS = """
(function () {
  const root = document.getElementById('{page_id}');
  const buttons = root.querySelectorAll(':scope > .llm-flow-tabs > button');
  const panels = root.querySelectorAll(':scope > .llm-flow-tab');
  buttons.forEach((button, k) => button.addEventListener('click', () => {
    panels.forEach((panel, j) => { panel.style.cssText = j === k ? '{shown}' : '{waiting}'; });
    buttons.forEach((other, j) => { other.style.fontWeight = j === k ? 'bold' : 'normal'; });
  }));
})();
"""


class HtmlPage:
    """Figures as standalone HTML. ``data`` is the page (as BertViz's ``html_action="return"``
    gives it: write it to a file, or display it); ``figures`` are the plotly figures drawn.
    With `tabs` (one name per figure) the figures sit in tabs, one shown at a time."""

    def __init__(self, figures: list[go.Figure], title: str, tabs: list[str] | None = None) -> None:
        if tabs is not None and len(tabs) != len(figures):
            raise ArgumentError(f"{len(tabs)} tab names for {len(figures)} figures")
        self.figures = figures
        self.title = title
        self.tabs = tabs

    @property
    def figure(self) -> go.Figure:
        """The first (usually the only) figure."""
        return self.figures[0]

    @property
    def data(self) -> str:
        """A whole HTML document that opens offline."""
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title></head>"
            f"<body style='background: white; font-family: sans-serif'>{self._fragment()}</body></html>"
        )

    def _repr_html_(self) -> str:
        return self._fragment()

    def _fragment(self) -> str:
        parts = [figure_html(figure, full_html=False, include_plotlyjs=k == 0) for k, figure in enumerate(self.figures)]
        if self.tabs is None:
            return "".join(parts)
        page_id = f"llm-flow-page-{uuid.uuid4().hex}"
        buttons = "".join(
            f"<button type='button' style='margin-right: 4px; font-weight: {'bold' if k == 0 else 'normal'}'>"
            f"{html.escape(name)}</button>"
            for k, name in enumerate(self.tabs)
        )
        panels = "".join(
            f"<div class='llm-flow-tab' style='{_SHOWN if k == 0 else _WAITING}'>{part}</div>"
            for k, part in enumerate(parts)
        )
        script = _TABS_JS.replace("{page_id}", page_id).replace("{shown}", _SHOWN).replace("{waiting}", _WAITING)
        return f"<div id='{page_id}' style='position: relative'><div class='llm-flow-tabs'>{buttons}</div>{panels}<script>{script}</script></div>"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to `path` (``.html``)."""
        if Path(path).suffix.lower() not in (".html", ".htm"):
            raise ArgumentError(f"cannot save a page as {Path(path).name!r}: use a name ending in .html")
        path = check_writable(path)
        path.write_text(self.data, encoding="utf-8")
        return path


def deliver(page: HtmlPage, html_action: str) -> HtmlPage | None:
    """BertViz's `html_action`: ``"view"`` shows the page in the cell, ``"return"`` returns it."""
    if html_action not in HTML_ACTIONS:
        raise ArgumentError(f"html_action must be 'view' or 'return' (got {html_action!r})")
    if html_action == "return":
        return page
    try:
        from IPython.display import display
    except ImportError:
        raise ArgumentError(
            "html_action='view' shows the figure in a notebook, and IPython is not installed: "
            "use html_action='return' and save the page (.save('view.html'))"
        ) from None
    display(page)
    return None

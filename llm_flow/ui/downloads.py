"""Download buttons for what a page shows: every figure as HTML, SVG and PNG, through the same
helper as the CLI (:mod:`llm_flow.export`). Files are made only when a button is pressed."""

from __future__ import annotations

import re
from functools import partial

import plotly.graph_objects as go
import streamlit as st

from llm_flow.errors import ExportError
from llm_flow.export import figure_bytes, find_browser

_MIME = {"html": "text/html", "svg": "image/svg+xml", "png": "image/png"}


def figure_downloads(figure: go.Figure, title: str, stem: str, key: str) -> None:
    """Three buttons in a row. Without a Chrome-family browser SVG and PNG are disabled, and
    the reason is shown rather than failing at the click."""
    try:
        find_browser()
        missing = None
    except ExportError as exc:
        missing = str(exc)
    name = safe_stem(stem)
    for column, fmt in zip(st.columns(3), ("html", "svg", "png")):
        column.download_button(
            fmt.upper(), data=partial(figure_bytes, figure, fmt, title), file_name=f"{name}.{fmt}",
            mime=_MIME[fmt], key=f"{key}_{fmt}_button", width="stretch", disabled=fmt != "html" and missing is not None,
            help=missing if fmt != "html" and missing else f"The figure as {fmt.upper()}, titled for a paper.",
            on_click="ignore",
        )  # fmt: skip
    if missing:
        st.caption(missing)


def safe_stem(text: str) -> str:
    """A file name from a description: letters, digits, dashes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80] or "llm-flow"

"""Download buttons for what a page shows: every figure as HTML, SVG and PNG, through the same
helper as the CLI (:mod:`llm_flow.export`). Files are made only when a button is pressed."""

from __future__ import annotations

import re
from functools import partial

import plotly.graph_objects as go
import streamlit as st

from llm_flow.errors import ArgumentError, ExportError
from llm_flow.export import DEFAULT_SIZE, SCALE_RANGE, SIZE_RANGE, check_figure_size, figure_bytes, find_browser

_MIME = {"html": "text/html", "svg": "image/svg+xml", "png": "image/png"}


def figure_downloads(figure: go.Figure, title: str, stem: str, key: str) -> None:
    """Width, height and PNG scale, then three buttons in a row. Without a Chrome-family browser
    SVG and PNG are disabled, and the reason is shown rather than failing at the click; so is a
    size out of range (the CLI's limits: :func:`llm_flow.export.check_figure_size`).

    The size inputs' keys are ``{key}_width``, ``{key}_height`` and ``{key}_scale`` after
    ``key`` loses a trailing ``_export`` and gains ``_export`` (``explorer_export`` gives
    ``explorer_export_width``; ``check_result`` gives ``check_result_export_width``).
    """
    try:
        find_browser()
        missing = None
    except ExportError as exc:
        missing = str(exc)
    width, height, scale = _size_inputs(figure, f"{key.removesuffix('_export')}_export")
    try:
        check_figure_size(width, height, scale)
        wrong_size = None
    except ArgumentError as exc:
        wrong_size = str(exc)
        st.error(wrong_size)
    name = safe_stem(stem)
    for column, fmt in zip(st.columns(3), ("html", "svg", "png")):
        problem = wrong_size or (missing if fmt != "html" else None)
        column.download_button(
            fmt.upper(), data=partial(figure_bytes, figure, fmt, title, width=width, height=height, scale=scale),
            file_name=f"{name}.{fmt}", mime=_MIME[fmt], key=f"{key}_{fmt}_button", width="stretch",
            disabled=problem is not None, help=problem or f"The figure as {fmt.upper()}, titled for a paper.",
            on_click="ignore",
        )  # fmt: skip
    if missing:
        st.caption(missing)


def _size_inputs(figure: go.Figure, prefix: str) -> tuple[int | None, int | None, float]:
    """Width and height (empty: the figure's own, as the CLI's default) and the PNG scale."""
    (low, high), (least, most) = SIZE_RANGE, SCALE_RANGE
    own = (figure.layout.width or DEFAULT_SIZE[0], figure.layout.height or DEFAULT_SIZE[1])
    width_column, height_column, scale_column = st.columns(3)
    width = width_column.number_input(
        "Width", value=None, step=50, placeholder=f"{own[0]} px", key=f"{prefix}_width",
        help=f"In pixels, {low}–{high}. Empty: the figure's own ({own[0]} px; the HTML then fills the window).",
    )  # fmt: skip
    height = height_column.number_input(
        "Height", value=None, step=50, placeholder=f"{own[1]} px", key=f"{prefix}_height",
        help=f"In pixels, {low}–{high}. Empty: the figure's own ({own[1]} px).",
    )  # fmt: skip
    scale = scale_column.number_input(
        "PNG scale", value=1.0, step=0.5, format="%.2g", key=f"{prefix}_scale",
        help=f"PNG pixels per figure pixel, {least:g}–{most:g}: 2 for print.",
    )  # fmt: skip
    return width, height, scale


def safe_stem(text: str) -> str:
    """A file name from a description: letters, digits, dashes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80] or "llm-flow"

"""Widgets several pages share."""

from __future__ import annotations

import streamlit as st

from llm_flow.models.run import Run
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.state import bind
from llm_flow.views.tokens import display_token


def token_slider(run: Run | Seq2SeqRun, label: str, help: str) -> int:
    """The shared token to explain (``route.position``): the same choice on every page (an
    encoder–decoder's decoder position). Its labels are a plain list, not a closure over the Run:
    Streamlit keeps widget formatters with the session, and a session must not keep a Run alive."""
    tokens = run.decoder_str_tokens if isinstance(run, Seq2SeqRun) else run.str_tokens
    labels = [f"{i}: {display_token(token)}" for i, token in enumerate(tokens)]
    return st.select_slider(label, options=list(range(len(tokens))), format_func=labels.__getitem__, help=help,
                            **bind("route.position"))  # fmt: skip


def clicked_element(chart_state) -> str | None:
    """The element id (node or edge name) of the first clicked point in a plotly selection
    state, if any."""
    try:
        points = chart_state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str):
            return data
    return None


def fit_layer_and_head(run: Run, settings) -> list[str]:
    """Put a page's ``layer`` (None: the page's default) and ``head`` back in range for this Run's
    model (another model, or a link that asked too much); return what was changed, in words."""
    info = run.model.info
    notices = []
    if settings.layer is not None and not 0 <= settings.layer < info.n_layers:
        notices.append(f"Layer {settings.layer} does not exist in {run.model.name} (0–{info.n_layers - 1}).")
        settings.layer = None
    if not 0 <= settings.head < info.n_heads:
        notices.append(f"Head {settings.head} does not exist in {run.model.name} (0–{info.n_heads - 1}).")
        settings.head = 0
    return notices

"""Widgets several pages share."""

from __future__ import annotations

import streamlit as st

from llm_flow.models.run import Run
from llm_flow.ui.state import bind
from llm_flow.views.tokens import display_token


def token_slider(run: Run, label: str, help: str) -> int:
    """The shared token to explain (``route.position``): the same choice on every page. Its
    labels are a plain list, not a closure over the Run: Streamlit keeps widget formatters with
    the session, and a session must not keep a Run alive."""
    labels = [f"{i}: {display_token(token)}" for i, token in enumerate(run.str_tokens)]
    return st.select_slider(label, options=list(range(run.n_tokens)), format_func=labels.__getitem__, help=help,
                            **bind("route.position"))  # fmt: skip

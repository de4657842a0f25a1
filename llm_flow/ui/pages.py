"""The app's pages, in menu order. Each page function receives the frame's Analysis."""

from __future__ import annotations

import streamlit as st

from llm_flow.ui import frame
from llm_flow.ui.attribution import attribution_page
from llm_flow.ui.explorer import explorer_page
from llm_flow.ui.guide import guide_page


def pages() -> dict[str, st.Page]:
    """url path -> page; the first is the default."""
    return {
        "explorer": st.Page(lambda: explorer_page(frame.current()), title="Explorer",
                            icon=":material/account_tree:", url_path="explorer", default=True),
        "attribution": st.Page(lambda: attribution_page(frame.current()), title="Attribution",
                               icon=":material/highlight:", url_path="attribution"),
        "guide": st.Page(guide_page, title="Guide", icon=":material/menu_book:", url_path="guide"),
    }  # fmt: skip

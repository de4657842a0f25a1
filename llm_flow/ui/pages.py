"""The app's pages, in menu order. Each page function receives the frame's Analysis."""

from __future__ import annotations

import streamlit as st

from llm_flow.ui import frame
from llm_flow.ui.attention import attention_page
from llm_flow.ui.attribution import attribution_page
from llm_flow.ui.dataset import dataset_page
from llm_flow.ui.explorer import explorer_page
from llm_flow.ui.guide import guide_page
from llm_flow.ui.playground import playground_page


def pages() -> dict[str, st.Page]:
    """url path -> page; the first is the default."""
    return {
        "explorer": st.Page(lambda: explorer_page(frame.current()), title="Explorer",
                            icon=":material/account_tree:", url_path="explorer", default=True),
        "attention": st.Page(lambda: attention_page(frame.current()), title="Attention",
                             icon=":material/visibility:", url_path="attention"),
        "attribution": st.Page(lambda: attribution_page(frame.current()), title="Attribution",
                               icon=":material/highlight:", url_path="attribution"),
        "playground": st.Page(lambda: playground_page(frame.current()), title="Playground",
                              icon=":material/casino:", url_path="playground"),
        "dataset": st.Page(lambda: dataset_page(frame.current()), title="Dataset",
                           icon=":material/dataset:", url_path="dataset"),
        "guide": st.Page(guide_page, title="Guide", icon=":material/menu_book:", url_path="guide"),
    }  # fmt: skip

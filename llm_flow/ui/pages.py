"""The app's pages, in menu order. Each page function receives the frame's Analysis.

The table of pages is fixed once per process and holds nothing of a session. The ``st.Page``
objects themselves are made per script run: Streamlit marks the page it hands out as callable
once (``Page._can_be_called``), so one object shared by concurrent sessions would let one
session's run refuse another's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import streamlit as st

from llm_flow.ui import frame
from llm_flow.ui.attention import attention_page
from llm_flow.ui.attribution import attribution_page
from llm_flow.ui.dataset import dataset_page
from llm_flow.ui.explorer import explorer_page
from llm_flow.ui.guide import guide_page
from llm_flow.ui.inside import inside_page
from llm_flow.ui.playground import playground_page


class PageSpec(NamedTuple):
    draw: Callable[[frame.Analysis], None]
    title: str
    icon: str


#: url path -> page, in menu order; the first is the default (the root URL).
PAGES: dict[str, PageSpec] = {
    "explorer": PageSpec(explorer_page, "Explorer", ":material/account_tree:"),
    "attention": PageSpec(attention_page, "Attention", ":material/visibility:"),
    "attribution": PageSpec(attribution_page, "Attribution", ":material/highlight:"),
    "playground": PageSpec(playground_page, "Playground", ":material/casino:"),
    "inside": PageSpec(inside_page, "Inside", ":material/layers:"),
    "dataset": PageSpec(dataset_page, "Dataset", ":material/dataset:"),
    "guide": PageSpec(lambda analysis: guide_page(), "Guide", ":material/menu_book:"),
}


def pages() -> dict[str, st.Page]:
    """This run's page objects (``st.switch_page`` finds a page by its url path)."""
    made = {}
    for position, (path, spec) in enumerate(PAGES.items()):
        made[path] = st.Page(
            lambda draw=spec.draw: draw(frame.current()), title=spec.title, icon=spec.icon,
            url_path=path, default=position == 0,
        )  # fmt: skip
    return made

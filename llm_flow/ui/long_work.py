"""Long computations in a page: a progress bar and a Cancel button.

A click on *Cancel* while the computation runs makes Streamlit stop the script at its next
progress update and start a new run, in which the caller's `on_cancel` (a button callback) has
already recorded that the request was withdrawn, so it is not started again, and whatever the
page showed before stays on screen: a result is only stored once it is complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from llm_flow.wording import step_progress

T = TypeVar("T")
Progress = Callable[[int, int], None]


def cancellable(compute: Callable[[Progress], T], label: str, key: str, on_cancel: Callable[[], None]) -> T:
    """``compute(progress)`` under a progress bar (``label: step 3 of 42, about 20 s left``)
    with a Cancel button; the bar and the button go once it returns or fails."""
    slot = st.empty()
    with slot.container():
        st.button("Cancel", key=f"{key}_cancel_button", on_click=on_cancel, icon=":material/cancel:",
                  help="Stop this computation; what was on screen before stays.")  # fmt: skip
        bar = st.progress(0.0, text=f"{label}…")
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=step_progress(label, done, total, time.perf_counter() - started))

    try:
        return compute(progress)
    finally:
        slot.empty()

"""What every page shares for an encoder–decoder (Marian, T5, BART): the target's place in the
sidebar, the source → target line above a page, and the message of a page that does not apply.

The pair on screen is the frame's active analysis: its prompt is the source, its target the
text typed here, the ids the Playground wrote, or "" when the model writes it greedily.
"""

from __future__ import annotations

import html

import streamlit as st

from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.analysis import ask_again
from llm_flow.ui.state import get_state, widget_key, widget_value
from llm_flow.views.tokens import display_token
from llm_flow.wording import plural


def target_controls(demo: bool = False) -> None:
    """The target box: explain a typed target, or let the model write its own (greedy). The
    Playground writes one sampled."""
    st.header("Target")
    source = get_state().source
    st.caption(f"Now: {target_origin(source.target)}. The Playground writes one sampled.")
    if demo:
        return
    with st.form("target_form", border=False):
        key = widget_key("source.target_input")
        st.session_state.setdefault(key, source.target_input)  # never over what is being typed
        st.text_area("Target text", key=key, height=90, placeholder="e.g. the translation to explain",
                     help="The decoder reads it after its start token; every page explains it token by token.")  # fmt: skip
        typed, written = st.columns(2)
        typed.form_submit_button("Analyse target", on_click=_submit_target, type="primary")
        written.form_submit_button("Model writes it", on_click=_greedy_target,
                                   help="The model's own target, written greedily (most likely token each step).")  # fmt: skip


def target_origin(target: str | tuple[int, ...]) -> str:
    """Where the target comes from, in words."""
    if isinstance(target, tuple):
        return "written on the Playground"
    return "typed" if target else "written by the model (greedy)"


def _submit_target() -> None:
    source = get_state().source
    source.target_input = text = widget_value("source.target_input") or ""
    if not text.strip():
        source.error = "The target is empty: type the target text to explain, or press *Model writes it*."
        return
    source.target = text
    ask_again()


def _greedy_target() -> None:
    source = get_state().source
    source.target_input = widget_value("source.target_input") or ""
    source.target = ""
    ask_again()


def pair_header(run: Seq2SeqRun) -> None:
    """Source → target of the pair on screen, with how the target came about."""
    target = "".join(display_token(t) for t in run.decoder_str_tokens[1:])
    st.markdown(
        "<div style='font-family:monospace;white-space:pre-wrap;padding:0.4em;border:1px solid #ddd;"
        f"border-radius:0.4em'><b>Source</b> {html.escape(run.source or '')}<br><b>Target</b> "
        f"<span style='background:#dbe8f5'>{html.escape(target)}</span></div>",
        unsafe_allow_html=True,
    )  # fmt: skip
    st.caption(
        f"{run.model.name}: {plural(run.n_source, 'source token')}, {plural(run.n_decoder - 1, 'target token')} "
        f"({target_origin(get_state().source.active.target)}) after the decoder's start token."
    )


def not_for_pairs(page: str, why: str, instead: tuple[str, ...] = ("attention", "attribution", "playground")) -> None:
    """The message of a page that does not apply to an encoder–decoder: why, and where to go."""
    from llm_flow.ui.pages import PAGES, pages

    st.info(f"**{page} is not available for encoder–decoders.** {why}")
    made = pages()
    for name in instead:
        st.page_link(made[name], label=f"{PAGES[name].title}: {_INSTEAD[name]}", icon=PAGES[name].icon)


_INSTEAD = {
    "attention": "the encoder's, the decoder's and the cross-attention, in three tabs",
    "attribution": "every target token attributed to the source and the target prefix (ALTI+ rollout, gradients, occlusion)",
    "playground": "write the target greedily or sampled",
}

"""The frame every page lives in: the model and prompt, the active Run, the shared route
settings, the sidebar, messages, and the URL that reopens the view.

It runs before ``st.navigation(...).run()`` on every rerun, so nothing it owns is lost when the
user moves between pages; pages get an :class:`Analysis` and draw only their own part. What the
session chose lives in its :class:`~llm_flow.ui.state.SessionState`, never only in a widget.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import streamlit as st

from llm_flow.config import Config, load_config
from llm_flow.models.base import TransparentLlm
from llm_flow.models.run import Run
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.analysis import Request, activate, explained_positions, requested
from llm_flow.ui.permalink import link_from_state, state_from_link
from llm_flow.ui.resources import ModelKey, get_run, settle_caches
from llm_flow.ui.sidebar import model_controls, prompt_controls, route_controls
from llm_flow.ui.state import STATE_KEY, SessionState, drawing_page, get_state, init_state


@dataclass(frozen=True)
class Analysis:
    """What every page works on: one immutable Run (an encoder–decoder's `Seq2SeqRun`) and the
    shared settings."""

    config: Config
    run: Run | Seq2SeqRun | None
    position: int  # the explained token
    threshold: float
    renormalize: bool

    @property
    def model(self) -> TransparentLlm | None:
        return None if self.run is None else self.run.model


#: The Analysis of the script run going on in this thread (each session's script runs in its
#: own thread). Not kept in the session state: a session must not hold a Run alive after the
#: shared cache has let it go. Set and cleared by :func:`page_run` around the page.
_current = threading.local()


@contextmanager
def page_run(config: Config, page: str) -> Iterator[Analysis]:
    """The frame around one page: prepared before, the URL and caches settled after a page that
    finished (a page that switched to another leaves that to the next run), and this thread's
    Analysis let go whatever happened. `page` names the page drawn (its URL path)."""
    drawing_page(page)
    analysis, link_slot = prepare(config)
    _current.analysis = analysis
    try:
        yield analysis
        finish(config)
        if analysis.run is not None:
            with link_slot.container():
                _link_control(config)
    finally:
        _current.analysis = None


def prepare(config: Config) -> tuple[Analysis, st.delta_generator.DeltaGenerator]:
    """Everything that comes before the page: state, link, analysis, sidebar, messages; and the
    sidebar's place for the link, filled once the page has drawn (and maybe changed settings)."""
    state = init_state(config)
    if not state.link_read:
        state = _apply_link(config)
    run = activate(requested(str(config.path)), fallback=_defaults(config, state))
    if run is not None and not 0 <= (state.route.position if state.route.position is not None else -1) < explained_positions(run):
        state.route.position = explained_positions(run) - 1
    with st.sidebar:
        model_controls(config, run.model if run is not None else None)
        prompt_controls(config, run)
        route_controls()
        link_slot = st.empty()
    for notice in state.source.notices:
        st.warning(notice)
    if state.source.error:
        st.error(state.source.error)
    analysis = Analysis(
        config=config, run=run, position=state.route.position if run is not None else -1,
        threshold=state.route.threshold, renormalize=state.route.renormalize,
    )  # fmt: skip
    return analysis, link_slot


def current() -> Analysis:
    """The Analysis the frame prepared for this run (what a page function receives)."""
    return _current.analysis


def active_run() -> Run | Seq2SeqRun:
    """The session's Run, from the shared cache. A fragment calls this instead of receiving the
    Run as an argument: Streamlit keeps a fragment's arguments for its reruns, and a session must
    not keep alive a Run the cache has dropped (it is recomputed if it is needed again)."""
    active: Request = get_state().source.active
    return get_run(active.model, active.prompt, target=active.target)


def finish(config: Config) -> None:
    """After the page: mirror what is on screen in the URL, so a copied link reopens it; bring
    the shared caches back under their byte limits (routes computed by the page grew the run)."""
    sync_link(config)
    settle_caches(config)


def sync_link(config: Config | None = None) -> None:
    """Make the URL show the session's state. A fragment calls it at its end (its reruns skip
    the frame), without the config: the active analysis names the config file."""
    state = get_state()
    if state.source.active is None:
        return
    if config is None:
        config = load_config(state.source.active.model.config_path)
    params = link_from_state(state, config)
    if params and st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


def open_in_explorer(position: int | None = None, selected: str | None = None) -> None:
    """Show the Explorer on this token (and element) of the active analysis. Call it from the
    page body (e.g. when a button returns True), not from a widget callback."""
    route = get_state().route
    if position is not None:
        route.position = position
    route.selected = selected
    from llm_flow.ui.pages import pages

    st.switch_page(pages()["explorer"])


def open_prompt(text: str, position: int | None = None, selected: str | None = None, page: str = "explorer") -> None:
    """Make `text` the active prompt (analysed on the next run, with the usual error handling)
    and show it on `page`. Same rule as :func:`open_in_explorer`: not from a callback."""
    source = get_state().source
    source.pending_prompt, source.pending_position, source.pending_selected = text, position, selected
    source.failed = None
    from llm_flow.ui.pages import pages

    st.switch_page(pages()[page])


def _apply_link(config: Config) -> SessionState:
    """The session's first URL becomes its state, with notices for what could not be honoured."""
    params = {name: st.query_params.get(name) for name in st.query_params}
    state, notices = state_from_link(params, config)
    state.source.notices = tuple(notices)
    state.link_read = True
    st.session_state[STATE_KEY] = state
    return state


def _defaults(config: Config, state: SessionState) -> Request:
    source = state.source
    return Request(ModelKey(config.default_model, source.device, source.dtype, str(config.path)), source.prompts[0])


def _link_control(config: Config) -> None:
    """A link to this very view, with a copy button (``st.code`` has one built in)."""
    with st.popover("Copy link", icon=":material/link:", width="stretch"):
        st.caption("Opens this model, prompt, token, selection and every page's settings on this page.")
        base = (st.context.url or "").split("?")[0]
        st.code(f"{base}?{urlencode(link_from_state(get_state(), config), quote_via=quote)}", language=None,
                wrap_lines=True)  # fmt: skip

"""The frame every page lives in: the model and prompt, the active Run, the shared route
settings, the sidebar, messages, and the URL that reopens the view.

It runs before ``st.navigation(...).run()`` on every rerun, so nothing it owns is lost when the
user moves between pages; pages get an :class:`Analysis` and draw only their own part.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import streamlit as st

from llm_flow.config import Config
from llm_flow.models.base import TransparentLlm
from llm_flow.models.run import Run
from llm_flow.ui import keys
from llm_flow.ui.analysis import Request, activate, requested
from llm_flow.ui.permalink import read_link, write_link
from llm_flow.ui.resources import ModelKey, get_run, settle_caches
from llm_flow.ui.sidebar import (
    init_state,
    model_controls,
    prompt_controls,
    route_controls,
)


@dataclass(frozen=True)
class Analysis:
    """What every page works on: one immutable Run and the shared settings."""

    config: Config
    run: Run | None
    target: int
    threshold: float
    renormalize: bool

    @property
    def model(self) -> TransparentLlm | None:
        return None if self.run is None else self.run.model


#: The Analysis of the script run going on in this thread (each session's script runs in its
#: own thread). Not kept in the session state: a session must not hold a Run alive after the
#: shared cache has let it go.
_current = threading.local()

#: The app's pages by url path, set by the app before the frame runs (for page switches).
PAGES: dict[str, st.Page] = {}


def prepare(config: Config) -> Analysis:
    """Everything that comes before the page: state, link, analysis, sidebar, messages."""
    keep_widget_state()
    init_state(config)
    if not st.session_state.get(keys.LINK_READ):
        st.session_state[keys.LINK_READ] = True
        _apply_link(config)
    run = activate(requested(str(config.path)), fallback=_defaults(config))
    with st.sidebar:
        model_controls(config, run.model if run is not None else None)
        prompt_controls(config)
        route_controls()
        link_slot = st.empty()
    for notice in st.session_state[keys.NOTICES]:
        st.warning(notice)
    if st.session_state[keys.ERROR]:
        st.error(st.session_state[keys.ERROR])
    analysis = Analysis(
        config=config,
        run=run,
        target=st.session_state.get(keys.TARGET, -1) if run is not None else -1,
        threshold=st.session_state[keys.THRESHOLD],
        renormalize=st.session_state[keys.RENORMALIZE],
    )
    _current.analysis = analysis
    if run is not None:
        with link_slot.container():
            _link_control()
    return analysis


def current() -> Analysis:
    """The Analysis the frame prepared for this run (what a page function receives)."""
    return _current.analysis


def active_run() -> Run:
    """The session's Run, from the shared cache. A fragment calls this instead of receiving the
    Run as an argument: Streamlit keeps a fragment's arguments for its reruns, and a session must
    not keep alive a Run the cache has dropped (it is recomputed if it is needed again)."""
    active: Request = st.session_state[keys.ACTIVE]
    return get_run(active.model, active.prompt)


def finish() -> None:
    """After the page: mirror what is on screen in the URL, so a copied link reopens it; bring
    the shared caches back under their byte limits (routes computed by the page grew the run);
    let go of the run's Analysis (the shared cache decides how long a Run lives)."""
    if st.session_state.get(keys.ACTIVE) is not None:
        params = _link_params()
        if st.query_params.to_dict() != params:
            st.query_params.from_dict(params)
    settle_caches(current().config)
    _current.analysis = None


def open_in_explorer(target: int | None = None, selected: str | None = None) -> None:
    """Show the Explorer on this token (and element) of the active analysis. Call it from the
    page body (e.g. when a button returns True), not from a widget callback."""
    if target is not None:
        st.session_state[keys.TARGET] = target
    st.session_state[keys.SELECTED] = selected
    st.switch_page(PAGES["explorer"])


def open_prompt(text: str, target: int | None = None, selected: str | None = None, page: str = "explorer") -> None:
    """Make `text` the active prompt (analysed on the next run, with the usual error handling)
    and show it on `page`. Same rule as :func:`open_in_explorer`: not from a callback."""
    st.session_state[keys.PENDING_PROMPT] = text
    st.session_state[keys.PENDING_TARGET] = target
    st.session_state[keys.PENDING_SELECTED] = selected
    st.session_state[keys.FAILED] = None
    st.switch_page(PAGES[page])


def keep_widget_state() -> None:
    """Streamlit forgets a widget's value when a run does not draw it (another page is shown);
    writing each kept value back at the start of the run makes it the session's own value."""
    for key in list(st.session_state.keys()):
        kept = key in keys.FRAME_WIDGETS or key.startswith(keys.PAGE_PREFIXES)
        if kept and not key.endswith(keys.UNKEPT_SUFFIXES):
            st.session_state[key] = st.session_state[key]


def _apply_link(config: Config) -> None:
    """The session's first URL: put what it asks for into the state, with notices for the rest."""
    params = {name: st.query_params.get(name) for name in st.query_params}
    if not params:
        return
    link = read_link(params, config)
    state = st.session_state
    if link.model_choice is not None:
        state[keys.MODEL_CHOICE] = link.model_choice
    if link.custom_model is not None:
        state[keys.CUSTOM_MODEL] = state[keys.CUSTOM_MODEL_INPUT] = link.custom_model
    if link.prompt_index is not None:
        state[keys.PROMPT_CHOICE] = state[keys.PROMPTS][link.prompt_index]
    if link.text is not None:
        state[keys.PENDING_PROMPT] = link.text
    if link.threshold is not None:
        state[keys.THRESHOLD] = link.threshold
    if link.renormalize is not None:
        state[keys.RENORMALIZE] = link.renormalize
    state[keys.PENDING_TARGET] = link.token
    state[keys.PENDING_SELECTED] = link.selected
    state[keys.NOTICES] = link.notices


def _defaults(config: Config) -> Request:
    state = st.session_state
    return Request(ModelKey(config.default_model, state[keys.DEVICE], state[keys.DTYPE], str(config.path)),
                   state[keys.PROMPTS][0])  # fmt: skip


def _link_control() -> None:
    """A link to this very view, with a copy button (``st.code`` has one built in)."""
    with st.popover("Copy link", icon=":material/link:", width="stretch"):
        st.caption("Opens this model, prompt, token, settings and selection on this page.")
        st.code(_current_url(), language=None, wrap_lines=True)


def _current_url() -> str:
    base = (st.context.url or "").split("?")[0]
    return f"{base}?{urlencode(_link_params(), quote_via=quote)}"


def _link_params() -> dict[str, str]:
    active: Request = st.session_state[keys.ACTIVE]
    return write_link(
        model=active.model.source, prompt=active.prompt, configured_prompts=list(current().config.prompts),
        token=st.session_state[keys.TARGET], threshold=st.session_state[keys.THRESHOLD],
        renormalize=st.session_state[keys.RENORMALIZE], selected=st.session_state.get(keys.SELECTED),
    )  # fmt: skip

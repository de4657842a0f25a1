"""Which model and prompt a session is looking at, and the switch to a new pair.

A session always shows its *active* analysis. When the user asks for another model or prompt the
new pair is loaded and run first; only if that works does it become active. A failure leaves
the previous analysis on screen, keeps what the user typed, and shows the reason. A refused
request is not retried on every rerun, only when the user asks again (a button, a new choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.models.run import Run
from llm_flow.ui.resources import ModelKey, get_run
from llm_flow.ui.state import get_state
from llm_flow.views.predictions import default_target
from llm_flow.wording import plural, sentence

#: Prompts longer than this open with only the route's token columns shown.
COMPACT_FROM_TOKENS = 30


@dataclass(frozen=True)
class Request:
    model: ModelKey
    prompt: str


def requested(config_path: str) -> Request:
    """The pair the session currently asks for. A typed prompt is asked for by one run only."""
    source = get_state().source
    prompt, source.pending_prompt = source.pending_prompt or source.prompt_choice, None
    model = source.custom_model.strip() or source.model_choice
    return Request(ModelKey(model, source.device, source.dtype, config_path), prompt)


def ask_again() -> None:
    """The user repeated a request on purpose: forget that it failed, so it runs (or fails) anew;
    what an opening link could not honour has been read by now."""
    source = get_state().source
    source.failed, source.notices = None, ()


def activate(request: Request, fallback: Request | None = None) -> Run | None:
    """Make `request` the active analysis if it is new; return the active Run (None if none yet).

    `fallback` (the configured defaults) is tried when nothing is active yet and `request` fails,
    so a bad link still opens on something to look at."""
    source = get_state().source
    active: Request | None = source.active
    if request != active and request != source.failed:
        run = _try(request, active)
        if run is not None:
            _accept(request, run)
            active = request
        elif active is None and fallback is not None and fallback != request:
            error = source.error
            run = _try(fallback, None)
            if run is not None:
                _accept(fallback, run)
                active = fallback
                source.error = f"{error} Showing the default model and prompt instead."
    if active is None:
        return None
    return get_run(active.model, active.prompt)


def _try(request: Request, active: Request | None) -> Run | None:
    box = st.empty()  # the progress box goes away whatever happens
    try:
        with box.container(), st.status(f"Analysing with {request.model.source}…", expanded=True) as status:
            latest = st.empty()  # progress arrives every second: show the latest message only
            run = get_run(request.model, request.prompt, progress=latest.write)
    except LlmFlowError as exc:
        box.empty()
        _refuse(request, active, str(exc))
        return None
    box.empty()
    return run


def _accept(request: Request, run: Run) -> None:
    """The new analysis opens on the token and element a link or another page asked for, if
    any (and valid), else on the last token with nothing selected."""
    state = get_state()
    source = state.source
    previous, source.active, source.error = source.active, request, None
    if request.prompt not in source.prompts:
        source.prompts = (*source.prompts, request.prompt)
    source.prompt_choice = request.prompt
    position, source.pending_position = source.pending_position, None
    if position is not None and not -run.n_tokens <= position < run.n_tokens:
        notice = f"Token {position} is out of range for this prompt ({plural(run.n_tokens, 'token')}); explaining the last one."
        source.notices = (*source.notices, notice)
        position = None
    state.route.position = default_target(run) if position is None else position % run.n_tokens
    state.route.selected, source.pending_selected = source.pending_selected, None
    if previous is not None and previous.prompt != request.prompt:
        state.explorer.compact = None  # a new prompt: show all its tokens or not by its length


def _refuse(request: Request, active: Request | None, message: str) -> None:
    """Show why, and put the choice widgets back on what is still displayed."""
    source = get_state().source
    source.failed = request
    shown = f" Still showing {active.model.source!r} on the previous prompt." if active else ""
    source.error = f"{sentence(message)}{shown}"
    if active is None:
        return
    if request.model.source != active.model.source and not source.custom_model.strip():
        source.model_choice = active.model.source
    source.device, source.dtype = active.model.device, active.model.dtype
    if request.prompt != active.prompt and active.prompt in source.prompts:
        source.prompt_choice = active.prompt

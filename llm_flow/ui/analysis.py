"""Which model and prompt a session is looking at, and the switch to a new pair.

A session always shows its *active* analysis. When the user asks for another model or prompt the
new pair is loaded and run first; only if that works does it become active. A failure leaves
the previous analysis on screen, keeps what the user typed, and shows the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.models.run import Run
from llm_flow.ui import keys
from llm_flow.ui.resources import ModelKey, get_run


#: Prompts longer than this open with only the route's token columns shown.
COMPACT_FROM_TOKENS = 30


@dataclass(frozen=True)
class Request:
    model: ModelKey
    prompt: str


def requested(config_path: str) -> Request:
    """The pair the session's widgets currently ask for."""
    state = st.session_state
    source = state[keys.CUSTOM_MODEL].strip() or state[keys.MODEL_CHOICE]
    prompt = state[keys.PENDING_PROMPT] or state[keys.PROMPT_CHOICE]
    return Request(ModelKey(source, state[keys.DEVICE], state[keys.DTYPE], config_path), prompt)


def activate(request: Request) -> Run | None:
    """Make `request` the active analysis if it is new; return the active Run (None if none yet)."""
    state = st.session_state
    active: Request | None = state.get(keys.ACTIVE)
    if request != active and request != state.get(keys.FAILED):
        try:
            with st.status(f"Analysing with {request.model.source}…", expanded=True) as status:
                run = get_run(request.model, request.prompt, progress=status.write)
                status.update(label=f"Ready: {run.model.name}, {run.n_tokens} tokens", state="complete", expanded=False)
        except LlmFlowError as exc:
            _refuse(request, active, str(exc))
        else:
            _accept(request, run)
            active = request
    if active is None:
        return None
    return get_run(active.model, active.prompt)


def _accept(request: Request, run: Run) -> None:
    state = st.session_state
    state[keys.ACTIVE] = request
    state[keys.ERROR] = None
    if state[keys.PENDING_PROMPT]:
        if request.prompt not in state[keys.PROMPTS]:
            state[keys.PROMPTS] = [*state[keys.PROMPTS], request.prompt]
        state[keys.PROMPT_CHOICE] = request.prompt
        state[keys.PENDING_PROMPT] = ""
    state[keys.TARGET] = run.n_tokens - 1
    state[keys.SELECTED] = None
    state[keys.COMPACT] = run.n_tokens > COMPACT_FROM_TOKENS


def _refuse(request: Request, active: Request | None, message: str) -> None:
    """Show why, and put the choice widgets back on what is still displayed."""
    state = st.session_state
    state[keys.FAILED] = request  # not retried on every rerun, only when the choice changes
    shown = f" Still showing {active.model.source!r} on the previous prompt." if active else ""
    state[keys.ERROR] = f"{message}.{shown}" if not message.endswith(".") else f"{message}{shown}"
    state[keys.PENDING_PROMPT] = ""
    if active is None:
        return
    if request.model.source != active.model.source and not state[keys.CUSTOM_MODEL].strip():
        state[keys.MODEL_CHOICE] = active.model.source
    state[keys.DEVICE], state[keys.DTYPE] = active.model.device, active.model.dtype
    if request.prompt != active.prompt and active.prompt in state[keys.PROMPTS]:
        state[keys.PROMPT_CHOICE] = active.prompt

"""Which model and prompt a session is looking at, and the switch to a new pair.

A session always shows its *active* analysis. When the user asks for another model or prompt the
new pair is loaded and run first; only if that works does it become active. A failure leaves
the previous analysis on screen, keeps what the user typed, and shows the reason. A refused
request is not retried on every rerun, only when the user asks again (a button, a new choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from llm_flow.errors import LlmFlowError
from llm_flow.models.run import Run
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.routes.seq2seq_graph import default_decoder_position
from llm_flow.ui.jobs import Job, jobs
from llm_flow.ui.resources import ModelKey, get_model, get_run, seq2seq_work
from llm_flow.ui.state import get_state
from llm_flow.views.predictions import default_target
from llm_flow.wording import plural, sentence

#: Prompts longer than this open with only the route's token columns shown.
COMPACT_FROM_TOKENS = 30


@dataclass(frozen=True)
class Request:
    model: ModelKey
    prompt: str  # an encoder–decoder's source
    target: str | tuple[int, ...] = ""  # an encoder–decoder's target: text, ids, or "" (it writes one greedily)


def requested(config_path: str) -> Request:
    """The pair the session currently asks for. A typed prompt stays asked for until its
    analysis is accepted or refused, or the user asks for something else: a page switch while
    it runs must not drop it."""
    source = get_state().source
    if source.pending_prompt:
        source.awaited_prompt, source.pending_prompt = source.pending_prompt, None
    prompt = source.awaited_prompt or source.prompt_choice
    model = source.custom_model.strip() or source.model_choice
    return Request(ModelKey(model, source.device, source.dtype, config_path), prompt, source.target)


def ask_again() -> None:
    """The user repeated a request on purpose: forget that it failed, so it runs (or fails) anew;
    what an opening link could not honour has been read by now. A new choice replaces a typed
    prompt still being analysed."""
    source = get_state().source
    source.failed, source.notices, source.awaited_prompt = None, (), None


def activate(request: Request, fallback: Request | None = None) -> Run | Seq2SeqRun | None:
    """Make `request` the active analysis if it is new; return the active Run (None if none yet).

    `fallback` (the configured defaults) is tried when nothing is active yet and `request` fails,
    so a bad link still opens on something to look at."""
    source = get_state().source
    active: Request | None = source.active
    if request != active and request != source.failed:
        if active is not None and source.watched == request and jobs().running(request) is not None:
            _follow(request, active)  # the session went on while it runs: don't hold the page
            return get_run(active.model, active.prompt, target=active.target)
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
    return get_run(active.model, active.prompt, target=active.target)


def explained_positions(run: Run | Seq2SeqRun) -> int:
    """How many tokens the shared token position ranges over: the prompt's, or an
    encoder–decoder's decoder tokens (the decoder start, then the target)."""
    return run.n_decoder if isinstance(run, Seq2SeqRun) else run.n_tokens


def _try(request: Request, active: Request | None) -> Run | Seq2SeqRun | None:
    """Watch the request's job (started if none runs) until it ends, drawing its progress; a
    click elsewhere stops this watch, not the job."""
    asker = get_script_run_ctx().session_id
    job = jobs().watch(request, asker, lambda job: _analyse(request, job))
    get_state().source.watched = request
    box = st.empty()  # the progress box goes away whatever happens
    try:
        with box.container(), st.status(f"Analysing with {request.model.source}…", expanded=True):
            latest = st.empty()
            _cancel_button(request, active, asker)
            while not job.finished.wait(0.25):
                latest.write(job.message)  # also where Streamlit answers a click made meanwhile
        run = job.outcome()
    except LlmFlowError as exc:
        box.empty()
        if get_state().source.failed != request:  # a Cancel has already said why
            _refuse(request, active, str(exc))
        return None
    box.empty()
    return run


def _analyse(request: Request, job: Job) -> Run | Seq2SeqRun:
    """The job's work: the model (loaded with its progress), then the forward pass, layer by layer."""
    model = get_model(request.model, job.say)
    if isinstance(model, Seq2SeqLlm):  # one pass of each stack, no per-layer progress
        job.say(seq2seq_work(request.target))
        return get_run(request.model, request.prompt, target=request.target)
    label = f"Forward pass over {plural(len(model.encode(request.prompt)), 'token')}"
    job.say(f"{label}…")
    with model.layer_progress(lambda done, total: job.layer_done(done, total, label)):
        return get_run(request.model, request.prompt)


@st.fragment(run_every=0.5)
def _follow(request: Request, active: Request) -> None:
    """The progress of an analysis this session asked for and then moved on from (another page,
    another click), above the page it is using meanwhile; the whole app reruns once it ends."""
    job = jobs().running(request)
    if job is None or job.finished.is_set():
        st.rerun(scope="app")
    with st.container(border=True):
        st.caption(f"Analysing with {request.model.source} — the page shows the previous analysis until it is done.")
        st.write(job.message)
        _cancel_button(request, active, get_script_run_ctx().session_id)


def _cancel_button(request: Request, active: Request | None, asker: str) -> None:
    st.button("Cancel", key=f"analysis_cancel_{hash(request)}", on_click=_cancel, args=(request, active, asker),
              icon=":material/cancel:", help="Stop this analysis at its next layer; what was on screen stays.")  # fmt: skip


def _cancel(request: Request, active: Request | None, asker: str) -> None:
    _refuse(request, active, "You cancelled the analysis.")
    jobs().withdraw(request, asker)


def _accept(request: Request, run: Run | Seq2SeqRun) -> None:
    """The new analysis opens on the token and element a link or another page asked for, if
    any (and valid), else on the last token with nothing selected."""
    state = get_state()
    source = state.source
    previous, source.active, source.error = source.active, request, None
    if request.prompt not in source.prompts:
        source.prompts = (*source.prompts, request.prompt)
    source.prompt_choice = request.prompt
    source.target = request.target  # the pair on screen (a fallback's target too)
    source.awaited_prompt = source.watched = None
    position, source.pending_position = source.pending_position, None
    length = explained_positions(run)
    pair = isinstance(run, Seq2SeqRun)
    if position is not None and not -length <= position < length:
        notice = (
            f"Decoder position {position} is out of range for this pair (the decoder reads the start token and "
            f"{plural(length - 1, 'target token')}: positions 0–{length - 1}); explaining position {default_decoder_position(run)}."
            if pair else f"Token {position} is out of range for this prompt ({plural(length, 'token')}); explaining the last one."
        )  # fmt: skip
        source.notices = (*source.notices, notice)
        position = None
    if position is None:
        position = default_decoder_position(run) if pair else default_target(run)
    state.route.position = position % length
    state.route.selected, source.pending_selected = source.pending_selected, None
    if previous is not None and previous.prompt != request.prompt:
        state.explorer.compact = None  # a new prompt: show all its tokens or not by its length


def _refuse(request: Request, active: Request | None, message: str) -> None:
    """Show why, and put the choice widgets back on what is still displayed."""
    source = get_state().source
    source.failed, source.awaited_prompt, source.watched = request, None, None
    shown = f" Still showing {active.model.source!r} on the previous prompt." if active else ""
    source.error = f"{sentence(message)}{shown}"
    if active is None:
        return
    if request.model.source != active.model.source:
        if source.custom_model.strip():  # the typed model failed: its box keeps the text, requests the model shown
            source.custom_model = "" if active.model.source == source.model_choice else active.model.source
        else:
            source.model_choice = active.model.source
    source.device, source.dtype = active.model.device, active.model.dtype
    if request.prompt != active.prompt and active.prompt in source.prompts:
        source.prompt_choice = active.prompt
    source.target = active.target  # a refused target stays in its box (source.target_input), not in the request

"""The playground page: the next-token distribution under temperature, top-k and top-p; step,
generate and undo; every generated token one click from its route; the anatomy of a prediction.

Nothing here re-runs the model for a sampling setting: the stages come from the active Run's last
logits. Stepping and generating make the generated text the active prompt (``frame.open_prompt``),
which the frame analyses like any typed prompt; the page keeps the token ids it generated and
says where the analysis tokenised the text differently.
"""

from __future__ import annotations

import html
import weakref
from dataclasses import dataclass

import pandas as pd
import streamlit as st
import torch

from llm_flow.errors import LlmFlowError, PromptError
from llm_flow.figures.playground import anatomy_figure, anatomy_title, heads_figure, sampling_figure
from llm_flow.models.run import Run
from llm_flow.ui import frame, keys
from llm_flow.ui.downloads import figure_downloads
from llm_flow.ui.explorer import clicked_element
from llm_flow.ui.frame import Analysis
from llm_flow.ui.widgets import token_slider
from llm_flow.views.anatomy import Anatomy, anatomy
from llm_flow.views.generation import (
    Generation,
    generate,
    predicting_positions,
    round_trips,
    step,
)
from llm_flow.views.sampling import SamplingSettings, sampling_stages, seeded_generator
from llm_flow.views.tokens import display_token
from llm_flow.wording import plural, sentence

# Page-owned session keys (the frame keeps ``playground_*`` values across page switches).
TEMPERATURE = "playground_temperature"
TOP_K = "playground_top_k"
TOP_P = "playground_top_p"
SEED = "playground_seed"
BARS = "playground_bars"
COUNT = "playground_count"
EXPLAIN = "playground_explain"
HISTORY = "playground_history"  # list[Entry]: what Step / Generate did, for undo and links
RANDOM = "playground_random"  # (seed, torch.Generator): the session's sampling source
MESSAGE = "playground_message"
_ANATOMY_MEMO = "playground_anatomy_memo"
# Widgets whose state must not outlive the run that drew them (see keys.UNKEPT_SUFFIXES).
STEP, GENERATE, UNDO = "playground_step_button", "playground_generate_button", "playground_undo_button"
TOKENS = "playground_tokens_button"
ANATOMY_CHART = "playground_anatomy_chart"

NEXT_IN_TEXT, TOP_PREDICTION = "the token that follows in the text", "the model's top prediction"


@dataclass(frozen=True)
class Entry:
    """One Step or Generate: the text before, the text it led to, and how it got there."""

    before: str
    after: str
    generation: Generation
    random_state: torch.Tensor  # the generator's state before, restored by Undo


def playground_page(analysis: Analysis) -> None:
    run = analysis.run
    if run is None:
        st.info("Choose a model and a prompt in the sidebar to begin.")
        return
    _init_state()
    history = _history(run)
    _show_text(run, history)
    if st.session_state.get(MESSAGE):
        st.info(st.session_state.pop(MESSAGE))
    sampling_column, anatomy_column = st.columns([1, 1], gap="large")
    with sampling_column:
        sampling_panel()
        _actions(run, history)
        _generated_tokens(run, history)
    with anatomy_column:
        _anatomy_panel(run, history)


def _init_state() -> None:
    defaults = {TEMPERATURE: 1.0, TOP_K: 0, TOP_P: 1.0, SEED: 0, BARS: 15, COUNT: 5, EXPLAIN: NEXT_IN_TEXT,
                HISTORY: []}  # fmt: skip
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def settings() -> SamplingSettings:
    state = st.session_state
    return SamplingSettings(float(state[TEMPERATURE]), int(state[TOP_K]), float(state[TOP_P]))


def _history(run: Run) -> list[Entry]:
    """The steps that led to the active text; forgotten once the user analyses another text."""
    history: list[Entry] = st.session_state[HISTORY]
    if history and history[-1].after != run.prompt:
        history = st.session_state[HISTORY] = []
    return history


def _show_text(run: Run, history: list[Entry]) -> None:
    start = history[0].before if history else run.prompt
    generated = run.prompt[len(start) :]
    st.markdown(
        f"<div style='font-family:monospace;white-space:pre-wrap;padding:0.5em;border:1px solid #ddd;"
        f"border-radius:0.4em'>{html.escape(start)}<span style='background:#dbe8f5'>{html.escape(generated)}"
        "</span></div>",
        unsafe_allow_html=True,
    )  # fmt: skip
    st.caption(
        f"{plural(run.n_tokens, 'token')}"
        + (f", of which {plural(_generated_count(history), 'generated token')} (shaded)." if history else ".")
    )


def _generated_count(history: list[Entry]) -> int:
    return sum(len(e.generation.tokens) for e in history)


@st.fragment
def sampling_panel() -> None:
    """Controls and stage bars: a fragment, so moving a slider redraws only this, from the logits
    already in the Run (fetched, not kept: see :func:`llm_flow.ui.frame.active_run`)."""
    run = frame.active_run()
    st.subheader("Next token")
    temperature, top_k, top_p, seed = st.columns(4)
    temperature.slider("Temperature", 0.0, 2.0, step=0.05, key=TEMPERATURE,
                       help="Divides the logits before the softmax; 0 is greedy (always the most likely token).")
    top_k.number_input("Top-k", 0, run.model.info.vocab_size, step=1, key=TOP_K,
                       help="Keep only the k most likely tokens (ties with the k-th stay); 0 is off.")
    top_p.slider("Top-p", 0.0, 1.0, step=0.01, key=TOP_P,
                 help="Keep the most likely tokens until their probabilities add up to p; 1 is off.")
    seed.number_input("Seed", 0, 2**31 - 1, step=1, key=SEED,
                      help="The same seed repeats the same draws (Step by step or Generate N alike).")  # fmt: skip
    stages = sampling_stages(run.logits[-1], settings())
    figure = sampling_figure(stages, run.model.decode_tokens, n=st.session_state[BARS])
    st.plotly_chart(figure, key="playground_stages_chart", width="stretch", config={"displayModeBar": False})
    best = stages.probs.max().item()
    st.caption(
        f"After {display_token(run.str_tokens[-1])!r}: {plural(stages.n_kept, 'token')} of "
        f"{run.model.info.vocab_size:,} can be drawn; the most likely has {best:.1%}. Grey bars are cut "
        "(shown at the probability they had before the cut)."
    )
    shown, export = st.columns([3, 1], vertical_alignment="bottom")
    shown.slider("Tokens shown", 5, 40, key=BARS)
    with export.popover("Export", icon=":material/download:", width="stretch"):
        title = f"{run.model.name}: next token after {run.prompt!r}, {settings().describe()}"
        stem = f"sampling-{run.model.name}-{settings().describe()}"
        figure_downloads(figure, title, stem, key="playground_stages_export")


def _actions(run: Run, history: list[Entry]) -> None:
    step_column, count_column, generate_column, undo_column = st.columns([1, 1, 1.3, 1], vertical_alignment="bottom")
    stepped = step_column.button("Step", key=STEP, icon=":material/skip_next:", width="stretch",
                                 help="Draw one token with these settings and append it.")
    count_column.number_input("Tokens", 1, 64, key=COUNT)
    generated = generate_column.button(f"Generate {st.session_state[COUNT]}", key=GENERATE, width="stretch",
                                       icon=":material/fast_forward:", help="Generate several tokens at once (KV cache).")
    undone = undo_column.button("Undo", key=UNDO, icon=":material/undo:", width="stretch",
                                disabled=not history)  # fmt: skip
    try:
        if stepped:
            _advance(run, history, lambda g: step(run, settings(), g)[1])
        elif generated:
            with st.spinner(f"Generating {plural(st.session_state[COUNT], 'token')}…"):
                count = st.session_state[COUNT]
                _advance(run, history, lambda g: generate(run.model, run.prompt, count, settings(), g))
        elif undone:
            _undo(history)
    except LlmFlowError as exc:
        st.error(sentence(str(exc)))


def _generator(run: Run) -> torch.Generator:
    """The session's sampling source, re-seeded when the seed changes."""
    seed = int(st.session_state[SEED])
    stored = st.session_state.get(RANDOM)
    if stored is None or stored[0] != seed:
        device = next(run.model.hf_model.parameters()).device
        stored = st.session_state[RANDOM] = (seed, seeded_generator(seed, device))
    return stored[1]


def _advance(run: Run, history: list[Entry], make) -> None:
    if history and history[-1].generation.ended:
        raise PromptError("the model ended the text with an end-of-sequence token: undo it to go on")
    generator = _generator(run)
    state = generator.get_state()
    generation: Generation = make(generator)
    history.append(Entry(run.prompt, generation.text, generation, state))
    st.session_state[HISTORY] = history
    if generation.text == run.prompt:  # only an end-of-sequence token came
        st.session_state[keys.TARGET] = run.n_tokens - 1
        st.session_state[MESSAGE] = "The model ended the text (end-of-sequence token); undo it to go on."
        st.rerun()
    last = generation.tokens[-1]
    target = last.position - 1 if round_trips(run.model, generation) and not last.eos else None
    frame.open_prompt(generation.text, target=target, page="playground")


def _undo(history: list[Entry]) -> None:
    entry = history.pop()
    st.session_state[HISTORY] = history
    stored = st.session_state.get(RANDOM)
    if stored is not None:
        stored[1].set_state(entry.random_state)
    if entry.before == entry.after:
        st.rerun()
    frame.open_prompt(entry.before, page="playground")


def _generated_tokens(run: Run, history: list[Entry]) -> None:
    """Every generated token as a pill; a click opens the route of the position that predicted it."""
    if not history:
        return
    tokens = [
        (token, position)
        for entry in history
        for token, position in zip(entry.generation.tokens, predicting_positions(run, entry.generation))
    ]
    labels = {
        k: f"{display_token(t.token)} {t.probability:.0%}" + (" (end)" if t.eos else "")
        for k, (t, _) in enumerate(tokens)
    }  # fmt: skip
    chosen = st.pills(
        "Generated tokens: click one to see its route in the Explorer", list(labels), key=TOKENS,
        format_func=labels.get, help="Percent: the token's probability in the distribution it was drawn from.",
    )  # fmt: skip
    if any(position is None for _, position in tokens):
        st.caption("Some generated tokens are read differently when the text is analysed again (the tokenizer "
                   "merges or splits them); the analysis cannot show their route.")  # fmt: skip
    if chosen is None:
        return
    token, position = tokens[chosen]
    if position is None:
        st.warning(f"{display_token(token.token)!r} does not exist as such in the analysed text (re-tokenised).")
        return
    frame.open_in_explorer(target=position)


def _anatomy_panel(run: Run, history: list[Entry]) -> None:
    st.subheader("Anatomy of one prediction")
    token_slider(run, "Token", help="The prediction made at this token (of the one that follows it).")
    target = st.session_state[keys.TARGET]
    st.radio("Explain", [NEXT_IN_TEXT, TOP_PREDICTION], key=EXPLAIN, horizontal=True,
             help="Whose rank the lens follows, when the text goes on after this token.")  # fmt: skip
    follows = target + 1 < run.n_tokens and st.session_state[EXPLAIN] == NEXT_IN_TEXT
    target_id = int(run.tokens[target + 1]) if follows else None
    result = _anatomy(run, target, target_id)
    final = result.rows[-1]
    st.caption(
        f"At {target}: {display_token(result.token)!r} → {display_token(result.target)!r}: probability "
        f"{final.target_probability:.1%}, rank {final.target_rank}. Each layer's bar splits the residual after "
        "it into what the layer's attention, its FFN and the incoming residual contributed; click a bar to "
        "open that block in the Explorer."
    )
    figure = anatomy_figure(result)
    event = st.plotly_chart(figure, key=ANATOMY_CHART, on_select="rerun", selection_mode="points",
                            width="stretch", config={"displayModeBar": False})  # fmt: skip
    node = clicked_element(event)
    if node is not None:
        frame.open_in_explorer(selected=node)  # the token is already the shared target
    with st.expander("Per-head split of the attention share"):
        st.plotly_chart(heads_figure(result), key="playground_heads_chart", width="stretch",
                        config={"displayModeBar": False})  # fmt: skip
    with st.expander("Numbers"):
        st.dataframe(_anatomy_table(result), hide_index=True, width="stretch", key="playground_anatomy_table")
        st.caption("The download icon at the top right of the table saves it as CSV.")
    with st.popover("Export", icon=":material/download:"):
        title = anatomy_title(run.model.name, run.prompt, result)
        figure_downloads(figure, title, f"anatomy-{run.model.name}-token{target}", key="playground_anatomy_export")


def _anatomy(run: Run, position: int, target_id: int | None) -> Anatomy:
    """Computed once per Run, token and explained token (not again for a slider in the sampling panel)."""
    inputs = (position, target_id)
    memo = st.session_state.get(_ANATOMY_MEMO)
    if memo is None or memo[0]() is not run or memo[1] != inputs:
        memo = (weakref.ref(run), inputs, anatomy(run, position, target_id))
        st.session_state[_ANATOMY_MEMO] = memo
    return memo[2]


def _anatomy_table(result: Anatomy) -> pd.DataFrame:
    rows = result.rows
    return pd.DataFrame(
        {
            "layer": ["emb" if r.layer < 0 else f"L{r.layer}" for r in rows],
            "‖residual‖": [r.norm for r in rows],
            "attention": [r.attention for r in rows],
            "FFN": [r.ffn for r in rows],
            "residual": [r.residual for r in rows],
            "lens top token": [display_token(r.lens_token) for r in rows],
            "lens top p": [r.lens_probability for r in rows],
            f"rank of {display_token(result.target)}": [r.target_rank for r in rows],
        }
    )

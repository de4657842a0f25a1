"""The playground page: the next-token distribution under temperature, top-k and top-p; step,
generate and undo; every generated token one click from its route; the anatomy of a prediction.

Nothing here re-runs the model for a sampling setting: the stages come from the active Run's last
logits. Stepping and generating make the generated text the active prompt (``frame.open_prompt``),
which the frame analyses like any typed prompt; the page keeps the token ids it generated and
says where the analysis tokenised the text differently.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd
import streamlit as st
import torch

from llm_flow.errors import LlmFlowError, PromptError
from llm_flow.figures.playground import anatomy_figure, anatomy_title, heads_figure, sampling_figure
from llm_flow.models.run import Run
from llm_flow.ui import frame
from llm_flow.ui.downloads import figure_downloads
from llm_flow.ui.explorer import clicked_element
from llm_flow.ui.frame import Analysis, sync_link
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.state import bind, get_state
from llm_flow.ui.widgets import token_slider
from llm_flow.views.anatomy import Anatomy, shared_anatomy
from llm_flow.views.generation import (
    Generation,
    generate,
    generation_in_run,
    predicting_positions,
    round_trips,
    step,
)
from llm_flow.views.sampling import SamplingSettings, sampling_stages, seeded_generator
from llm_flow.views.tokens import display_token
from llm_flow.wording import plural, probability, sentence

STEP, GENERATE, UNDO = "playground_step_button", "playground_generate_button", "playground_undo_button"
TOKENS = "playground_tokens_button"
ANATOMY_CHART = "playground_anatomy_chart"

EXPLAIN = {"next": "the token that follows in the text", "top": "the model's top prediction"}


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
    if isinstance(run, Seq2SeqRun):
        from llm_flow.ui.seq2seq_playground import seq2seq_playground_page  # it shares this page's settings

        seq2seq_playground_page(run)
        return
    history = _history(run)
    _show_text(run, history)
    state = get_state().playground
    if state.message:
        st.info(state.message)
        state.message = None
    sampling_column, anatomy_column = st.columns([1, 1], gap="large")
    with sampling_column:
        sampling_panel()
        _actions(run, history)
        _generated_tokens(run, history)
    with anatomy_column:
        _anatomy_panel(run, history)


def settings() -> SamplingSettings:
    state = get_state().playground
    return SamplingSettings(float(state.temperature), int(state.top_k), float(state.top_p))


def _history(run: Run) -> list[Entry]:
    """The steps that led to the active text; forgotten once the user analyses another text."""
    state = get_state().playground
    if state.history and state.history[-1].after != run.prompt:
        state.history, state.generated = [], ()
    if not state.history and state.generated:  # a link: the generated ids, the text to analyse
        generation = generation_in_run(run, state.generated)
        if generation is None:
            st.warning("The link's generated tokens are not the last tokens of its text; they are not marked.")
            state.generated = ()
        else:
            start = seeded_generator(state.seed, next(run.model.hf_model.parameters()).device).get_state()
            state.history = [Entry(generation.prompt, run.prompt, generation, start)]
            state.message = ("Reopened from a link: the percentages are the model's own probabilities (the "
                             "sampling settings each token was drawn with are not in the link).")  # fmt: skip
    return state.history


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
    state = get_state().playground
    state.top_k = min(state.top_k, run.model.info.vocab_size)
    temperature.slider("Temperature", 0.0, 2.0, step=0.05, **bind("playground.temperature"),
                       help="Divides the logits before the softmax; 0 is greedy (always the most likely token).")
    top_k.number_input("Top-k", 0, run.model.info.vocab_size, step=1, **bind("playground.top_k"),
                       help="Keep only the k most likely tokens (ties with the k-th stay); 0 is off.")
    top_p.slider("Top-p", 0.0, 1.0, step=0.01, **bind("playground.top_p"),
                 help="Keep the most likely tokens until their probabilities add up to p; 1 is off.")
    seed.number_input("Seed", 0, 2**31 - 1, step=1, **bind("playground.seed"),
                      help="The same seed repeats the same draws (Step by step or Generate N alike).")  # fmt: skip
    stages = sampling_stages(run.position_logits(-1), settings())
    figure = sampling_figure(stages, run.model.decode_tokens, n=state.bars)
    st.plotly_chart(figure, key="playground_stages_chart", width="stretch", config={"displayModeBar": False})
    best = stages.probs.max().item()
    st.caption(
        f"After {display_token(run.str_tokens[-1])!r}: {plural(stages.n_kept, 'token')} of "
        f"{run.model.info.vocab_size:,} can be drawn; the most likely has {probability(best)}. Grey bars are cut "
        "(shown at the probability they had before the cut)."
    )
    shown, export = st.columns([3, 1], vertical_alignment="bottom")
    shown.slider("Tokens shown", 5, 40, **bind("playground.bars"))
    with export.popover("Export", icon=":material/download:", width="stretch"):
        title = f"{run.model.name}: next token after {run.prompt!r}, {settings().describe()}"
        stem = f"sampling-{run.model.name}-{settings().describe()}"
        figure_downloads(figure, title, stem, key="playground_stages_export")
    sync_link()


def _actions(run: Run, history: list[Entry]) -> None:
    step_column, count_column, generate_column, undo_column = st.columns([1, 1, 1.3, 1], vertical_alignment="bottom")
    stepped = step_column.button("Step", key=STEP, icon=":material/skip_next:", width="stretch",
                                 help="Draw one token with these settings and append it.")
    count_column.number_input("Tokens", 1, 64, **bind("playground.count"))
    count = get_state().playground.count
    generated = generate_column.button(f"Generate {count}", key=GENERATE, width="stretch",
                                       icon=":material/fast_forward:", help="Generate several tokens at once (KV cache).")
    undone = undo_column.button("Undo", key=UNDO, icon=":material/undo:", width="stretch",
                                disabled=not history)  # fmt: skip
    try:
        if stepped:
            _advance(run, history, lambda g: step(run, settings(), g)[1])
        elif generated:
            with st.spinner(f"Generating {plural(count, 'token')}…"):
                _advance(run, history, lambda g: generate(run.model, run.prompt, count, settings(), g))
        elif undone:
            _undo(history)
    except LlmFlowError as exc:
        st.error(sentence(str(exc)))


def _generator(run: Run) -> torch.Generator:
    """The session's sampling source, re-seeded when the seed changes."""
    state = get_state().playground
    if state.random is None or state.random[0] != state.seed:
        device = next(run.model.hf_model.parameters()).device
        state.random = (state.seed, seeded_generator(state.seed, device))
    return state.random[1]


def _advance(run: Run, history: list[Entry], make) -> None:
    if history and history[-1].generation.ended:
        raise PromptError("the model ended the text with an end-of-sequence token: undo it to go on")
    generator = _generator(run)
    state = generator.get_state()
    generation: Generation = make(generator)
    history.append(Entry(run.prompt, generation.text, generation, state))
    session = get_state()
    session.playground.generated = _generated_ids(history)
    if generation.text == run.prompt:  # only an end-of-sequence token came
        session.route.position = run.n_tokens - 1
        session.playground.message = "The model ended the text (end-of-sequence token); undo it to go on."
        st.rerun()
    last = generation.tokens[-1]
    position = last.position - 1 if round_trips(run.model, generation) and not last.eos else None
    frame.open_prompt(generation.text, position=position, page="playground")


def _undo(history: list[Entry]) -> None:
    entry = history.pop()
    state = get_state().playground
    state.generated = _generated_ids(history)
    if state.random is not None:
        state.random[1].set_state(entry.random_state)
    if entry.before == entry.after:
        st.rerun()
    frame.open_prompt(entry.before, page="playground")


def _generated_ids(history: list[Entry]) -> tuple[int, ...]:
    """Every token id generated so far: what a link keeps (ids survive re-tokenisation)."""
    return tuple(token.token_id for entry in history for token in entry.generation.tokens)


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
        k: f"{display_token(t.token)} {probability(t.probability)}" + (" (end)" if t.eos else "")
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
    frame.open_in_explorer(position=position)


def _anatomy_panel(run: Run, history: list[Entry]) -> None:
    st.subheader("Anatomy of one prediction")
    token_slider(run, "Token", help="The prediction made at this token (of the one that follows it).")
    session = get_state()
    target = session.route.position
    st.radio("Explain", list(EXPLAIN), format_func=EXPLAIN.get, horizontal=True, **bind("playground.explain"),
             help="Whose rank the lens follows, when the text goes on after this token.")  # fmt: skip
    follows = target + 1 < run.n_tokens and session.playground.explain == "next"
    target_id = int(run.tokens[target + 1]) if follows else None
    result = shared_anatomy(run, target, target_id)  # kept with the Run: not again for a slider
    final = result.rows[-1]
    st.caption(
        f"At {target}: {display_token(result.token)!r} → {display_token(result.target)!r}: probability "
        f"{probability(final.target_probability)}, rank {final.target_rank}. Each layer's bar splits the residual after "
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

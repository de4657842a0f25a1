"""The Playground for an encoder–decoder: write the target of the source on screen, greedily
(temperature 0) or sampled with temperature, top-k, top-p and a seed, and see the distribution
each target token was drawn from.

Writing makes the written token ids the pair's target (the frame analyses the new pair like
any other request, so every page then explains it); the ids, not their text, are kept, so the
analysis reads exactly what was written. The sampling settings are the decoder Playground's.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from llm_flow.errors import LlmFlowError
from llm_flow.figures.playground import sampling_figure
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.analysis import ask_again
from llm_flow.ui.playground import settings
from llm_flow.ui.resources import target_room
from llm_flow.ui.seq2seq import pair_header
from llm_flow.ui.state import bind, get_state
from llm_flow.views.sampling import sampling_stages, seeded_generator
from llm_flow.views.seq2seq_generation import TargetGeneration, write_target
from llm_flow.views.tokens import display_token
from llm_flow.wording import plural, probability, sentence

WRITE = "seq2seq_playground_write_button"


def seq2seq_playground_page(run: Seq2SeqRun) -> None:
    pair_header(run)
    write_column, step_column = st.columns([1, 1], gap="large")
    with write_column:
        _write_panel(run)
    with step_column:
        _step_panel(run)


def _write_panel(run: Seq2SeqRun) -> None:
    st.subheader("Write the target")
    state = get_state().playground
    vocab = run.model.info.vocab_size
    state.top_k = min(state.top_k, vocab)
    temperature, top_k, top_p, seed = st.columns(4)
    temperature.slider("Temperature", 0.0, 2.0, step=0.05, **bind("playground.temperature"),
                       help="Divides the logits before the softmax; 0 is greedy (always the most likely token).")
    top_k.number_input("Top-k", 0, vocab, step=1, **bind("playground.top_k"),
                       help="Keep only the k most likely tokens (ties with the k-th stay); 0 is off.")
    top_p.slider("Top-p", 0.0, 1.0, step=0.01, **bind("playground.top_p"),
                 help="Keep the most likely tokens until their probabilities add up to p; 1 is off.")
    seed.number_input("Seed", 0, 2**31 - 1, step=1, **bind("playground.seed"),
                      help="The same seed repeats the same draws.")  # fmt: skip
    count, button = st.columns([1, 2], vertical_alignment="bottom")
    count.number_input("Target tokens (at most)", 1, 256, **bind("playground.target_tokens"))
    if button.button(f"Write a target ({settings().describe()})", key=WRITE, type="primary",
                     icon=":material/edit_note:", width="stretch"):  # fmt: skip
        _write(run)
    _written_tokens(run)


def _write(run: Seq2SeqRun) -> None:
    """Write a target for the source on screen and make it the pair's target."""
    state = get_state()
    playground = state.playground
    device = next(run.model.hf_seq2seq.parameters()).device
    if playground.random is None or playground.random[0] != playground.seed:
        playground.random = (playground.seed, seeded_generator(playground.seed, device))
    count = target_room(run.model, int(playground.target_tokens))
    try:
        with st.spinner(f"Writing up to {plural(count, 'token')}…"):
            written = write_target(run.model, run.source, count, settings(), playground.random[1])
    except LlmFlowError as exc:
        st.error(sentence(str(exc)))
        return
    if not written.ids:
        st.error("The model wrote no target token: try a higher temperature or another seed.")
        return
    playground.written = written
    state.source.target = tuple(written.ids)
    ask_again()
    st.rerun()  # the frame analyses the new pair before anything is drawn with it


def _written_tokens(run: Seq2SeqRun) -> None:
    """The tokens of the last written target, with the probability each was drawn with, while
    that target is on screen."""
    written: TargetGeneration | None = get_state().playground.written
    if written is None or tuple(written.ids) != tuple(run.target_ids) or written.source != run.source:
        st.caption("Write a target to see the probability of each token it was drawn with.")
        return
    st.caption(
        f"Written token by token ({'ended by the model' if written.stop == 'eos' else 'stopped at the limit'}); "
        "probability: in the distribution it was drawn from; model: the model's own."
    )
    table = pd.DataFrame({
        "position": [t.position for t in written.tokens],
        "token": [display_token(t.token) for t in written.tokens],
        "probability": [t.probability for t in written.tokens],
        "model probability": [t.model_probability for t in written.tokens],
        "rank": [t.rank for t in written.tokens],
    })  # fmt: skip
    st.dataframe(table, hide_index=True, width="stretch", key="seq2seq_playground_written_table")


def _step_panel(run: Seq2SeqRun) -> None:
    """One target step's next-token distribution under the settings, its target token outlined."""
    st.subheader("One step of the target")
    n_steps = run.n_decoder - 1
    labels = [f"{step}: {display_token(token)}" for step, token in enumerate(run.decoder_str_tokens[1:])]
    state = get_state().attribution  # the step shared with the Attribution page (its pills: another widget)
    if not 0 <= state.step < n_steps:
        state.step = 0
    if n_steps > 1:
        st.select_slider("Target token", options=list(range(n_steps)), format_func=labels.__getitem__,
                         help="The distribution the decoder wrote this token from (after the source and the target before it).",
                         **bind("attribution.step"))  # fmt: skip
    step = state.step
    chosen = run.target_ids[step]
    stages = sampling_stages(run.logits[step], settings())
    figure = sampling_figure(stages, run.model.decode_tokens, n=get_state().playground.bars, chosen=chosen)
    st.plotly_chart(figure, key="seq2seq_playground_stages_chart", width="stretch", config={"displayModeBar": False})
    model_p = float(torch.softmax(run.logits[step].double(), -1)[chosen])
    st.caption(
        f"Target token {step} {display_token(run.decoder_str_tokens[step + 1])!r} (outlined): the model gave it "
        f"{probability(model_p)}; with these settings {plural(stages.n_kept, 'token')} of "
        f"{run.model.info.vocab_size:,} can be drawn. Grey bars are cut."
    )

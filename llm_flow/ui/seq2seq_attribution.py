"""The Attribution page for an encoder–decoder, as Inseq does it: every target token of the pair
on screen attributed to the source tokens and to the target prefix before it, with step scores.

The methods are `SEQ2SEQ_METHODS` (saliency, input × gradient, integrated gradients, occlusion,
cross-attention, ALTI+ rollout), computed on the very token ids of the active `Seq2SeqRun`
(`attribute_pair`), whether the target was typed, written greedily or sampled. Settings, cost
checks, the heatmap, the steps and the exports are the decoder page's.
"""

from __future__ import annotations

import streamlit as st

from llm_flow.attribution.base import BASELINES
from llm_flow.attribution.seq2seq import SEQ2SEQ_METHODS, attribute_pair, pair_sequence, seq2seq_method
from llm_flow.errors import LlmFlowError
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.attribution import cancel_request, contrast_controls, go_ahead, keep_result, recent_results, show_result
from llm_flow.ui.long_work import cancellable
from llm_flow.ui.seq2seq import pair_header
from llm_flow.ui.state import bind, get_state
from llm_flow.wording import sentence

DEFAULT_METHOD = "integrated_gradients"


def seq2seq_attribution_page(run: Seq2SeqRun) -> None:
    pair_header(run)
    st.caption("Each row is a target token; its columns are the source tokens, the decoder's start token and "
               "the target tokens before it (blank: not yet written at that step).")  # fmt: skip
    _fit_to_run(run)
    method, options = _method_controls(run)
    foil, function = contrast_controls()
    request = ("pair", get_state().source.active, method, tuple(sorted(options.items())), foil, function)
    state = get_state().attribution
    sequence = pair_sequence(run)
    try:
        chosen = seq2seq_method(run.model, method, options)
        result = recent_results().get(request)
        if result is None and go_ahead(request, sequence, chosen):
            result = cancellable(
                lambda progress: attribute_pair(run, chosen, foil=foil, function=function, progress=progress),
                chosen.label, key="attribution", on_cancel=lambda: cancel_request(request),
            )  # fmt: skip
            keep_result(request, lambda: result)
    except LlmFlowError as exc:
        st.error(sentence(str(exc)))
        return
    if result is None:  # not computed (yet): what was on screen stays, if it was this pair's
        previous = recent_results().get(state.shown)
        if previous is None or state.shown[:2] != request[:2]:
            return
        st.caption("Below: the previous result, for the settings before this change.")
        request, result = state.shown, previous
    state.shown = request
    show_result(run.model, sequence, result.by_words() if state.words else result)


def _fit_to_run(run: Seq2SeqRun) -> None:
    """A method or layer the decoder page (or a link) left that this model cannot use goes back
    to the default, said once."""
    state = get_state().attribution
    notices = []
    if state.method not in SEQ2SEQ_METHODS:
        notices.append(f"{state.method!r} is not available for encoder–decoders; using integrated gradients.")
        state.method = DEFAULT_METHOD
    if state.baseline not in BASELINES:
        state.baseline = "zeros"
    n_layers = run.n_layers_of("cross")
    if state.layer is not None and not 0 <= state.layer < n_layers:
        notices.append(f"The decoder of {run.model.name} has no layer {state.layer}; using its last layer.")
        state.layer = None
    if notices:
        st.warning(" ".join(notices))


def _method_controls(run: Seq2SeqRun) -> tuple[str, dict[str, object]]:
    st.segmented_control("Method", list(SEQ2SEQ_METHODS), required=True,
                         format_func=lambda name: SEQ2SEQ_METHODS[name].label, **bind("attribution.method"))  # fmt: skip
    state = get_state().attribution
    method = state.method
    options: dict[str, object] = {}
    columns = st.columns(4)
    if method == "integrated_gradients":
        columns[0].number_input("Integration points", 2, 256, **bind("attribution.ig_steps"))
        columns[1].selectbox("Baseline", BASELINES,
                             help="What a token is compared with, on each side: zero embeddings, the vocabulary's "
                                  "mean embedding, or the end-of-sequence token's embedding.",
                             **bind("attribution.baseline"))  # fmt: skip
        options.update(n_steps=int(state.ig_steps), baseline=state.baseline)
    if method == "occlusion":
        columns[0].number_input("Window (tokens occluded at once)", 1, 512, **bind("attribution.window"))
        options["window"] = int(state.window)
    if method == "attention":
        last = run.n_layers_of("cross") - 1  # until the user chooses (kept out of links)
        columns[0].number_input("Decoder layer", 0, last,
                                **bind("attribution.layer", to_widget=lambda layer: last if layer is None else layer))  # fmt: skip
        columns[1].segmented_control("Heads", ["mean", "max"], required=True, **bind("attribution.heads"))
        options.update(layer=last if state.layer is None else int(state.layer), heads=state.heads)
    st.caption(SEQ2SEQ_METHODS[method].summary)
    return method, options

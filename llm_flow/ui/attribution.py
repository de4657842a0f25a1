"""The attribution page: which input tokens made the model produce each token of a
continuation. The continuation is generated (N tokens) or typed; the method is one click; a
foil makes it contrastive; every generated token opens in the Explorer in one click."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from llm_flow.attribution import (
    MAX_GENERATE,
    METHODS,
    Attribution,
    Method,
    Sequence,
    attribute_sequence,
    get_method,
    prepare,
)
from llm_flow.attribution.base import BASELINES
from llm_flow.attribution.targets import context_text
from llm_flow.errors import LlmFlowError
from llm_flow.figures.attribution import attribution_heatmap, standalone_html, step_html, target_labels
from llm_flow.models.base import TransparentLlm
from llm_flow.ui import frame
from llm_flow.ui.long_work import cancellable
from llm_flow.ui.resources import token_pass_rate
from llm_flow.ui.state import bind, get_state
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import Analysis
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.views.tokens import display_token
from llm_flow.wording import duration, sentence, shortened

_KEPT = 12  # sequences and results a session keeps (switching back to a method is instant)
#: Above this many token passes (`Method.work`) the page asks before computing: ~2 min on the
#: 2-core development machine under load (benchmarks.attribution), seconds on a GPU.
ASK_ABOVE_TOKEN_PASSES = 30_000
#: Past this estimate the page refuses (the CLI and the library have no such limit).
REFUSE_ABOVE_SECONDS = 3600
CACHE = "attribution_cache"  # recent sequences and results of this session
CHART = "attribution_heatmap_chart"  # the plotly chart's selection state (Streamlit's own)


@dataclass(frozen=True)
class _Target:
    """What continuation to explain; with the model and prompt, it fixes the Sequence."""

    model: object  # the frame's ModelKey
    prompt: str
    chat_template: bool
    continuation: str | None
    generate: int | None


def attribution_page(analysis: Analysis) -> None:
    run = analysis.run
    if run is None:
        st.info("Choose a model and a prompt in the sidebar to begin.")
        return
    if isinstance(run, Seq2SeqRun):
        from llm_flow.ui.seq2seq_attribution import seq2seq_attribution_page  # it draws with this page's parts

        seq2seq_attribution_page(run)
        return
    model = run.model
    _fit_to_model(model)
    entry = analysis.config.model(model.name)
    target = _target_controls(run.prompt, bool(entry and entry.chat_template), model.info.bidirectional)
    method, options = _method_controls(model)
    foil, function = contrast_controls()
    request = ("result", target, method, tuple(sorted(options.items())), foil, function)
    state = get_state().attribution
    try:
        sequence = keep_result(("sequence", target), lambda: _prepare(model, target))
        chosen = get_method(method, **options)
        result = recent_results().get(request)
        if result is None and go_ahead(request, sequence, chosen):
            result = cancellable(
                lambda progress: attribute_sequence(model, sequence, chosen, foil=foil, function=function, progress=progress),
                chosen.label, key="attribution", on_cancel=lambda: cancel_request(request),
            )  # fmt: skip
            keep_result(request, lambda: result)
    except LlmFlowError as exc:
        st.error(sentence(str(exc)))
        return
    if result is None:  # not computed (yet): what was on screen stays
        previous = recent_results().get(state.shown)
        if previous is None:
            return
        st.caption("Below: the previous result, for the settings before this change.")
        request, result = state.shown, previous
        sequence = recent_results().get(("sequence", request[1]), sequence)
    state.shown = request
    shown = result.by_words() if state.words else result
    show_result(model, sequence, shown)


def cancel_request(request: tuple) -> None:
    """*Cancel* on a running attribution: it is not restarted on its own (see `go_ahead`).
    Shared with the encoder–decoder page."""
    state = get_state().attribution
    state.cancelled, state.confirmed = request, None


def _fit_to_model(model: TransparentLlm) -> None:
    """Settings a link (or another model) left out of range go back to their defaults, said once."""
    state = get_state().attribution
    notices = []
    if state.method not in METHODS:
        notices.append(f"There is no attribution method {state.method!r}; using integrated gradients.")
        state.method = "integrated_gradients"
    if state.baseline not in BASELINES:
        notices.append(f"There is no baseline {state.baseline!r}; using zeros.")
        state.baseline = "zeros"
    if state.layer is not None and not 0 <= state.layer < model.info.n_layers:
        notices.append(f"Layer {state.layer} does not exist in {model.name}; using the last layer.")
        state.layer = None
    if notices:
        st.warning(" ".join(notices))


# --- controls ---------------------------------------------------------------------------------


def _target_controls(prompt: str, chat_template: bool, encoder: bool) -> _Target:
    """What to explain: a continuation; on an encoder, the token predicted at the mask (its own
    prediction, or one typed)."""
    if encoder:
        chat_template = False
        st.caption(f"Prompt: {shortened(prompt)!r}. An encoder's prediction at its first mask token is explained, "
                   "from every token of the prompt, before and after the mask.")  # fmt: skip
    else:
        st.caption(f"Prompt: {shortened(prompt)!r}" + (" (in the model's chat template)" if chat_template else ""))
    source, detail = st.columns([1, 3], vertical_alignment="bottom")
    source.segmented_control("Token at the mask" if encoder else "Continuation", ["Generate", "Type"], required=True,
                             format_func={"Generate": "Predicted", "Type": "Type"}.get if encoder else None,
                             **bind("attribution.source"))  # fmt: skip
    state = get_state().attribution
    generated = state.source == "Generate"
    if generated and encoder:
        detail.caption("The token the model predicts at the mask.")
    elif generated:
        detail.number_input("Tokens to generate (greedy)", 1, MAX_GENERATE, **bind("attribution.generate"))
    elif encoder:
        detail.text_input("Token to explain at the mask", placeholder="e.g. 'paris' (one token)",
                          **bind("attribution.continuation"))  # fmt: skip
    else:
        detail.text_input("Continuation to explain", placeholder="e.g. ' Paris' (mind the leading space)",
                          **bind("attribution.continuation"))  # fmt: skip
    return _Target(
        model=get_state().source.active.model, prompt=prompt, chat_template=chat_template,
        continuation=None if generated else state.continuation,
        generate=(1 if encoder else int(state.generate)) if generated else None,
    )  # fmt: skip


def _method_controls(model: TransparentLlm) -> tuple[str, dict[str, object]]:
    st.segmented_control(
        "Method", list(METHODS), required=True, format_func=lambda name: METHODS[name].label,
        **bind("attribution.method"),
    )  # fmt: skip
    state = get_state().attribution
    method = state.method
    options: dict[str, object] = {}
    columns = st.columns(4)
    if method == "integrated_gradients":
        columns[0].number_input("Integration points", 2, 256, **bind("attribution.ig_steps"))
        options["n_steps"] = int(state.ig_steps)
    if method == "gradient_shap":
        columns[0].number_input("Samples", 1, 128, **bind("attribution.samples"))
        options["n_samples"] = int(state.samples)
    if method == "occlusion":
        columns[0].number_input("Window (tokens occluded at once)", 1, 512, **bind("attribution.window"))
        options["window"] = int(state.window)
        if model.info.bidirectional:  # an encoder has no end-of-sequence token to occlude with
            options["baseline"] = "mask"
            columns[1].caption(f"Each token is replaced by {model.tokenizer.mask_token}.")
    if method == "integrated_gradients":
        columns[1].selectbox("Baseline", BASELINES,
                             help="What a token is compared with: zero embeddings, the vocabulary's "
                                  "mean embedding, or the end-of-sequence token's embedding.",
                             **bind("attribution.baseline"))  # fmt: skip
        options["baseline"] = state.baseline
    if method == "attention":
        last = model.info.n_layers - 1  # until the user chooses (kept out of links)
        columns[0].number_input("Layer", 0, last, **bind("attribution.layer", to_widget=lambda layer: last if layer is None else layer))
        columns[1].segmented_control("Heads", ["mean", "max"], required=True, **bind("attribution.heads"))
        options["layer"] = last if state.layer is None else int(state.layer)
        options["heads"] = state.heads
    st.caption(METHODS[method].summary)
    return method, options


def contrast_controls() -> tuple[str | None, str]:
    """The foil, the explained score and the words toggle, shared with the encoder–decoder page;
    returns (foil or None, "probability" or "logit")."""
    left, right, words = st.columns([2, 2, 1], vertical_alignment="bottom")
    left.text_input("Foil (contrastive)", placeholder="e.g. ' London'",
                    help="One token. Gradient and occlusion methods then explain the target's "
                         "score minus the foil's: why this token and not that one?", **bind("attribution.foil"))  # fmt: skip
    right.segmented_control("Explain the target's", ["probability", "logit"], required=True, **bind("attribution.function"))
    words.toggle("Words", help="Sum sub-word tokens into words.", **bind("attribution.words"))
    state = get_state().attribution
    return (state.foil if state.foil.strip() else None), state.function


# --- computation ------------------------------------------------------------------------------


def recent_results() -> OrderedDict:
    """Recent sequences and results of this session, so going back to a method is instant (on
    this page and the encoder–decoder's)."""
    return st.session_state.setdefault(CACHE, OrderedDict())


def keep_result(key: tuple, compute):
    """`compute()` kept under `key` among this session's recent results (the oldest go beyond
    `_KEPT`), or the one kept already."""
    cache = recent_results()
    if key not in cache:
        cache[key] = compute()
        while len(cache) > _KEPT:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def go_ahead(request: tuple, sequence: Sequence, method: Method) -> bool:
    """Start at once unless the request would take minutes: then say what it costs and wait
    for *Compute* (a page that computes on every change must not freeze on a long prompt); past
    an hour on this machine, refuse and say what would be quicker."""
    state = get_state().attribution
    work = method.work(sequence)
    rate = token_pass_rate(get_state().source.active.model)
    seconds = None if rate is None else work / rate
    passes = f"runs the model {method.passes(sequence):,} times over up to {len(sequence.ids) - 1:,} tokens" + (
        " with a backward pass each" if method.uses_gradients else ""
    )
    quicker = (
        "Saliency, Attention and ALTI rollout are much quicker; fewer integration points or samples, a wider "
        "occlusion window or fewer generated tokens make this one quicker"
    )
    if seconds is not None and seconds > REFUSE_ABOVE_SECONDS:
        st.error(
            f"{method.label} here {passes}: {duration(seconds)} on this machine (timed from this prompt's "
            f"forward pass), over the hour this page allows. {quicker}; `llm-flow attribute` runs it without "
            "a limit."
        )
        return False
    if state.confirmed == request:
        return True
    if state.cancelled == request:
        st.info(f"{method.label} was cancelled. Press *Compute* to start it again, or change a setting.")
    elif work <= ASK_ABOVE_TOKEN_PASSES:
        return True
    else:
        cost = "minutes on a CPU" if seconds is None else f"{duration(seconds)} on this machine"
        st.info(f"{method.label} here {passes}: {cost}. {quicker}.")
    if st.button("Compute", key="attribution_compute_button", type="primary"):
        state.confirmed, state.cancelled = request, None
        return True
    return False


def _prepare(model: TransparentLlm, target: _Target) -> Sequence:
    with st.spinner("Generating the continuation…" if target.generate else "Tokenising…"):
        return prepare(model, target.prompt, target.continuation, target.generate, target.chat_template)


# --- results ----------------------------------------------------------------------------------


def show_result(model: TransparentLlm, sequence: Sequence, result: Attribution) -> None:
    """The heatmap, the explained token's text, the Explorer buttons, the step scores and the
    exports of one result: the same for a decoder's prompt and an encoder–decoder's pair."""
    figure = attribution_heatmap(result)
    st.plotly_chart(figure, key=CHART, on_select=_on_heatmap_click, selection_mode="points",
                    width="stretch", config={"displaylogo": False})  # fmt: skip
    state = get_state().attribution
    if state.step not in range(result.n_steps):
        state.step = 0
    labels = target_labels(result)
    st.pills("Explained token" if result.position is not None else "Generated token", list(range(result.n_steps)),
             required=True, format_func=labels.__getitem__, **bind("attribution.step"))  # fmt: skip
    step = state.step
    st.html(step_html(result, step))
    _explorer_links(model, sequence, result)
    st.subheader("Step scores")
    st.dataframe(step_table(result), hide_index=True)
    _exports(result, figure)


def _on_heatmap_click() -> None:
    """A click on a heatmap cell shows that row's generated token."""
    chart = st.session_state.get(CHART)
    try:
        points = chart["selection"]["points"]
    except (KeyError, TypeError):
        return
    if points and isinstance(points[0].get("y"), int):
        get_state().attribution.step = points[0]["y"]


def _explorer_links(model: TransparentLlm, sequence: Sequence, result: Attribution) -> None:
    """One button per generated token: its context becomes the active prompt in the Explorer,
    whose route then explains the prediction of that very token (an encoder–decoder's pair stays
    on screen: decoder position `step` predicts target token `step`)."""
    st.caption("Open in the Explorer: the route to the prediction of")
    with st.container(horizontal=True):
        for step, token in enumerate(result.targets):
            if st.button(f"{step}: {display_token(token)}", key=f"attribution_explore_{step}_button"):
                if result.n_source is not None:
                    frame.open_in_explorer(position=step)
                elif sequence.position is not None:  # an encoder: the same prompt, on its mask
                    frame.open_prompt(sequence.prompt, position=sequence.position)
                else:
                    frame.open_prompt(context_text(model, sequence.ids[: sequence.n_prompt + step]), position=-1)


def step_table(result: Attribution) -> pd.DataFrame:
    table = pd.DataFrame({"step": range(result.n_steps), "token": [display_token(t) for t in result.targets]})
    for name, values in result.step_scores.items():
        table[name] = values
    if result.deltas is not None:
        table["IG delta"] = result.deltas
    return table


def _exports(result: Attribution, figure) -> None:
    """Files are built when a button is pressed: the result as JSON (reloadable with
    `load_attribution`), CSV (one row per step and source) and standalone HTML (heatmap and
    coloured text), and the heatmap alone as HTML, SVG or PNG."""
    stem = safe_stem(f"attribution-{result.method}-{result.model}")
    files = (  # label, content, file name, type, what it is
        ("Result as JSON (reloadable)", lambda: json.dumps(result.to_dict(), indent=1), f"{stem}.json",
         "application/json", "Every score and setting; llm_flow.attribution.load_attribution reads it back."),
        ("Result as CSV (long table)", lambda: result.to_frame().to_csv(index=False), f"{stem}.csv",
         "text/csv", "One row per step and source token."),
        ("Heatmap and text as HTML", lambda: standalone_html(result), f"{stem}-heatmap-and-text.html",
         "text/html", "One page with the heatmap and the text coloured by score; opens offline."),
    )  # fmt: skip
    with st.popover("Export", icon=":material/download:"):
        for label, data, name, mime, what in files:
            st.download_button(label, data=data, file_name=name, mime=mime, width="stretch", help=what,
                               key=f"attribution_export_{name.rsplit('.', 1)[1]}_button", on_click="ignore")  # fmt: skip
        st.caption("The heatmap alone, titled for a paper:")
        figure_downloads(figure, figure.layout.title.text, f"{stem}-heatmap", key="attribution_export_figure")

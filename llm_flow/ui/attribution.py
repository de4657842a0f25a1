"""The attribution page: which input tokens made the model produce each token of a
continuation. The continuation is generated (N tokens) or typed; the method is one click; a
foil makes it contrastive; every generated token opens in the Explorer in one click."""

from __future__ import annotations

import json
import time
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
from llm_flow.models.bridge import BridgeLlm
from llm_flow.ui import frame, keys
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import Analysis
from llm_flow.views.tokens import display_token
from llm_flow.wording import sentence, shortened, step_progress

_KEPT = 12  # sequences and results a session keeps (switching back to a method is instant)
#: Above this many token passes (`Method.work`) the page asks before computing: ~2 min on the
#: 2-core development machine under load (benchmarks.attribution), seconds on a GPU.
ASK_ABOVE_TOKEN_PASSES = 30_000
_DEFAULTS = {
    keys.ATTR_SOURCE: "Generate", keys.ATTR_GENERATE: 3, keys.ATTR_CONTINUATION: "",
    keys.ATTR_METHOD: "integrated_gradients", keys.ATTR_FOIL: "", keys.ATTR_FUNCTION: "probability",
    keys.ATTR_WORDS: False, keys.ATTR_IG_STEPS: 32, keys.ATTR_BASELINE: "zeros", keys.ATTR_SAMPLES: 8,
    keys.ATTR_WINDOW: 1, keys.ATTR_HEADS: "mean",
}  # fmt: skip


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
    model: BridgeLlm = run.model
    for key, value in _DEFAULTS.items():
        st.session_state.setdefault(key, value)
    st.session_state.setdefault(keys.ATTR_LAYER, model.info.n_layers - 1)
    entry = analysis.config.model(model.name)
    target = _target_controls(run.prompt, bool(entry and entry.chat_template))
    method, options = _method_controls(model)
    foil, function = _contrast_controls()
    request = ("result", target, method, tuple(sorted(options.items())), foil, function)
    try:
        sequence = _cached(("sequence", target), lambda: _prepare(model, target))
        chosen = get_method(method, **options)
        if not _go_ahead(request, sequence, chosen):
            return
        result = _cached(request, lambda: _attribute(model, sequence, chosen, foil, function))
    except LlmFlowError as exc:
        st.error(sentence(str(exc)))
        return
    shown = result.by_words() if st.session_state[keys.ATTR_WORDS] else result
    _results(model, sequence, shown)


# --- controls ---------------------------------------------------------------------------------


def _target_controls(prompt: str, chat_template: bool) -> _Target:
    st.caption(f"Prompt: {shortened(prompt)!r}" + (" (in the model's chat template)" if chat_template else ""))
    source, detail = st.columns([1, 3], vertical_alignment="bottom")
    source.segmented_control("Continuation", ["Generate", "Type"], key=keys.ATTR_SOURCE, required=True)
    generated = st.session_state[keys.ATTR_SOURCE] == "Generate"
    if generated:
        detail.number_input("Tokens to generate (greedy)", 1, MAX_GENERATE, key=keys.ATTR_GENERATE)
    else:
        detail.text_input("Continuation to explain", key=keys.ATTR_CONTINUATION,
                          placeholder="e.g. ' Paris' (mind the leading space)")  # fmt: skip
    return _Target(
        model=st.session_state[keys.ACTIVE].model, prompt=prompt, chat_template=chat_template,
        continuation=None if generated else st.session_state[keys.ATTR_CONTINUATION],
        generate=int(st.session_state[keys.ATTR_GENERATE]) if generated else None,
    )  # fmt: skip


def _method_controls(model: BridgeLlm) -> tuple[str, dict[str, object]]:
    st.segmented_control(
        "Method", list(METHODS), key=keys.ATTR_METHOD, required=True,
        format_func=lambda name: METHODS[name].label,
    )  # fmt: skip
    method = st.session_state[keys.ATTR_METHOD]
    options: dict[str, object] = {}
    columns = st.columns(4)
    if method == "integrated_gradients":
        columns[0].number_input("Integration points", 2, 256, key=keys.ATTR_IG_STEPS)
        options["n_steps"] = int(st.session_state[keys.ATTR_IG_STEPS])
    if method == "gradient_shap":
        columns[0].number_input("Samples", 1, 128, key=keys.ATTR_SAMPLES)
        options["n_samples"] = int(st.session_state[keys.ATTR_SAMPLES])
    if method == "occlusion":
        columns[0].number_input("Window (tokens occluded at once)", 1, 512, key=keys.ATTR_WINDOW)
        options["window"] = int(st.session_state[keys.ATTR_WINDOW])
    if method == "integrated_gradients":
        columns[1].selectbox("Baseline", BASELINES, key=keys.ATTR_BASELINE,
                             help="What a token is compared with: zero embeddings, the vocabulary's "
                                  "mean embedding, or the end-of-sequence token's embedding.")  # fmt: skip
        options["baseline"] = st.session_state[keys.ATTR_BASELINE]
    if method == "attention":
        columns[0].number_input("Layer", 0, model.info.n_layers - 1, key=keys.ATTR_LAYER)
        columns[1].segmented_control("Heads", ["mean", "max"], key=keys.ATTR_HEADS, required=True)
        options["layer"] = int(st.session_state[keys.ATTR_LAYER])
        options["heads"] = st.session_state[keys.ATTR_HEADS]
    st.caption(METHODS[method].summary)
    return method, options


def _contrast_controls() -> tuple[str | None, str]:
    left, right, words = st.columns([2, 2, 1], vertical_alignment="bottom")
    left.text_input("Foil (contrastive)", key=keys.ATTR_FOIL, placeholder="e.g. ' London'",
                    help="One token. Gradient and occlusion methods then explain the target's "
                         "score minus the foil's: why this token and not that one?")  # fmt: skip
    right.segmented_control("Explain the target's", ["probability", "logit"], key=keys.ATTR_FUNCTION, required=True)
    words.toggle("Words", key=keys.ATTR_WORDS, help="Sum sub-word tokens into words.")
    foil = st.session_state[keys.ATTR_FOIL]
    return (foil if foil.strip() else None), st.session_state[keys.ATTR_FUNCTION]


# --- computation ------------------------------------------------------------------------------


def _cached(key: tuple, compute):
    """Recent sequences and results of this session, so going back to a method is instant."""
    cache: OrderedDict = st.session_state.setdefault(keys.ATTR_CACHE, OrderedDict())
    if key not in cache:
        cache[key] = compute()
        while len(cache) > _KEPT:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def _go_ahead(request: tuple, sequence: Sequence, method: Method) -> bool:
    """Start at once unless the request would take minutes: then say what it costs and wait
    for *Compute* (a page that computes on every change must not freeze on a long prompt)."""
    state = st.session_state
    if request in state.get(keys.ATTR_CACHE, {}) or state.get(keys.ATTR_CONFIRMED) == request:
        return True
    if method.work(sequence) <= ASK_ABOVE_TOKEN_PASSES:
        return True
    passes = method.passes(sequence)
    with_gradients = " with a backward pass each" if method.uses_gradients else ""
    st.info(
        f"{method.label} here runs the model {passes:,} times over up to {len(sequence.ids) - 1:,} tokens"
        f"{with_gradients}: minutes on a CPU. Saliency, Attention and ALTI rollout are much quicker; fewer "
        "integration points or samples, a wider occlusion window or fewer generated tokens make this one quicker."
    )  # fmt: skip
    if st.button("Compute", key="attribution_compute_button", type="primary"):
        state[keys.ATTR_CONFIRMED] = request
        return True
    return False


def _prepare(model: BridgeLlm, target: _Target) -> Sequence:
    with st.spinner("Generating the continuation…" if target.generate else "Tokenising…"):
        return prepare(model, target.prompt, target.continuation, target.generate, target.chat_template)


def _attribute(model, sequence: Sequence, method: Method, foil: str | None, function: str) -> Attribution:
    bar = st.progress(0.0, text=step_progress(method.label, 0, sequence.n_steps, 0.0))
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=step_progress(method.label, done, total, time.perf_counter() - started))

    try:
        return attribute_sequence(model, sequence, method, foil=foil, function=function, progress=progress)
    finally:
        bar.empty()


# --- results ----------------------------------------------------------------------------------


def _results(model: BridgeLlm, sequence: Sequence, result: Attribution) -> None:
    figure = attribution_heatmap(result)
    st.plotly_chart(figure, key=keys.ATTR_CHART, on_select=_on_heatmap_click, selection_mode="points",
                    width="stretch", config={"displaylogo": False})  # fmt: skip
    if st.session_state.get(keys.ATTR_STEP) not in range(result.n_steps):
        st.session_state[keys.ATTR_STEP] = 0
    labels = target_labels(result)
    st.pills("Generated token", list(range(result.n_steps)), key=keys.ATTR_STEP, required=True,
             format_func=lambda step: labels[step])  # fmt: skip
    step = st.session_state[keys.ATTR_STEP]
    st.html(step_html(result, step))
    _explorer_links(model, sequence, result)
    st.subheader("Step scores")
    st.dataframe(step_table(result), hide_index=True)
    _exports(result, figure)


def _on_heatmap_click() -> None:
    """A click on a heatmap cell shows that row's generated token."""
    state = st.session_state.get(keys.ATTR_CHART)
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return
    if points and isinstance(points[0].get("y"), int):
        st.session_state[keys.ATTR_STEP] = points[0]["y"]


def _explorer_links(model: BridgeLlm, sequence: Sequence, result: Attribution) -> None:
    """One button per generated token: its context becomes the active prompt in the Explorer,
    whose route then explains the prediction of that very token."""
    st.caption("Open in the Explorer: the route to the prediction of")
    with st.container(horizontal=True):
        for step, token in enumerate(result.targets):
            if st.button(f"{step}: {display_token(token)}", key=f"attribution_explore_{step}_button"):
                text = context_text(model, sequence.ids[: sequence.n_prompt + step])
                frame.open_prompt(text, target=-1)


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

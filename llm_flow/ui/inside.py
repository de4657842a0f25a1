"""The Inside page: one prediction of the active model walked through stage by stage, with its real
numbers (Transformer Explainer's walk-through, on any model llm-flow loads).

At the top a flow from the tokens through every layer to the prediction, sized by ALTI shares;
a click on a layer walks through that block. Below, every stage in the model's order, each a
compact strip of the chosen token's vectors: a stage expands in place to its formula, what to
notice and the matrices of a window of tokens (the attention stage to its step-by-step matrices
for the chosen head, the query row outlined). A guided tour (Previous / Next) expands the stages
one after the other; the step is in the link.

Nothing here re-runs the model but the chosen layer's block alone (once per layer and window):
see `llm_flow.views.inside`. The sampling settings are the Playground's.
"""

from __future__ import annotations

import re
from functools import partial

import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.figures.inside import detail_figure, overview_figure, stage_sampling_figure, strip_figure, walkthrough_page
from llm_flow.models.run import Run
from llm_flow.routes.nodes import NodeId
from llm_flow.ui import frame
from llm_flow.ui.downloads import safe_stem
from llm_flow.ui.frame import Analysis
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.seq2seq import not_for_pairs
from llm_flow.ui.attention import clicked_point
from llm_flow.ui.playground import settings as sampling_settings
from llm_flow.ui.state import bind, get_state
from llm_flow.ui.widgets import fit_layer_and_head, token_slider
from llm_flow.views.inside import WINDOW, Overview, Stage, Walkthrough, overview, shared_walkthrough
from llm_flow.views.tokens import display_token

OVERVIEW_CHART = "inside_overview_chart"
GROUPS = {"input": "Input", "block": "Block {layer}", "output": "Output"}
_CHART_CONFIG = {"displayModeBar": False}


def inside_page(analysis: Analysis) -> None:
    run = analysis.run
    if run is None:
        st.info("Choose a model and a prompt in the sidebar to begin.")
        return
    if isinstance(run, Seq2SeqRun):
        not_for_pairs("Inside", "It steps through one block of a decoder-only or encoder model (queries, keys, "
                      "values, the FFN) on llm-flow's hooked pass, which encoder–decoders do not run through.")
        return
    _fit_to_run(run)
    _controls(run)
    state = get_state()
    layer, head, position = shown_layer(run), state.inside.head, state.route.position
    try:
        with st.spinner(f"Computing block {layer} at token {position} (once per layer and window)…"):
            walk = shared_walkthrough(run, layer, head, position, WINDOW, sampling_settings(), state.playground.seed)
            flow = overview(run, position, WINDOW)
    except LlmFlowError as exc:
        st.error(str(exc))
        return
    _fit_stage(walk)
    _caption(run, walk, flow)
    _tour(walk)
    _overview(run, walk, flow)
    group = None
    for stage in walk.stages:
        if stage.group != group:
            group = stage.group
            st.subheader(GROUPS[group].format(layer=layer))
        _stage(walk, stage)
    _export(run, walk, flow)


# --- state and controls ------------------------------------------------------------------------


def shown_layer(run: Run) -> int:
    """The layer walked through: the user's, else the middle one."""
    chosen = get_state().inside.layer
    return run.model.info.n_layers // 2 if chosen is None else chosen


def _fit_to_run(run: Run) -> None:
    """A layer or head that does not exist in this model (another model, a link) back in range."""
    notices = fit_layer_and_head(run, get_state().inside)
    if notices:
        st.warning(" ".join(notices) + " Showing the nearest valid choice.")


def _fit_stage(walk: Walkthrough) -> None:
    """A tour step or stage this model does not have (a GPT-2 link asking for rotary) is dropped."""
    state = get_state().inside
    if state.step > len(walk.stages):
        state.step = 0
    if state.stage is not None and state.stage not in walk.keys:
        st.warning(plain(f"{walk.model} has no stage {state.stage!r}; showing the overview."))
        state.stage = None


def _controls(run: Run) -> None:
    info = run.model.info
    left, middle, right = st.columns([1, 1, 4])
    left.selectbox("Layer", range(info.n_layers), help="The block walked through (or click a layer in the flow).",
                   **bind("inside.layer", to_widget=lambda _: shown_layer(run)))  # fmt: skip
    kv = f" ({info.n_kv_heads} key/value heads, shared)" if info.n_kv_heads < info.n_heads else ""
    middle.selectbox("Head", range(info.n_heads), help=f"The attention head shown step by step{kv}.",
                     **bind("inside.head"))  # fmt: skip
    with right:
        token_slider(run, "Token", help="The position whose next-token prediction is walked through (shared with the other pages).")


def _caption(run: Run, walk: Walkthrough, flow: Overview) -> None:
    span = walk.window
    shown = f" Matrices show tokens {span.start}–{span.stop - 1} of {run.n_tokens}." if len(span) < run.n_tokens else ""
    st.caption(
        plain(f"{walk.model} ({walk.architecture}) at token {walk.position} {display_token(walk.token)!r}: the model "
              f"predicts {display_token(flow.prediction)!r} ({flow.probability:.1%}). ")
        + f"Every number below is the model's own; hover a cell for its value.{shown} Sampling: "
        f"{walk.settings.describe()} (set on the Playground)."
    )


def plain(text: str) -> str:
    """Text with tokens in it, shown as it is: Streamlit reads markdown and $…$ as LaTeX, and a
    token may be "*", "_", "$" or "<b>"."""
    return _MARKDOWN.sub(r"\\\g<0>", text)


_MARKDOWN = re.compile(r"[\\`*_{}\[\]()#+\-.!|$<>~]")


# --- the guided tour ----------------------------------------------------------------------------


def _tour(walk: Walkthrough) -> None:
    state = get_state().inside
    steps = len(walk.stages)
    with st.container(border=True):
        text, back, forward = st.columns([6, 1.2, 1.2], vertical_alignment="center")
        if state.step == 0:
            text.markdown(
                f"**Guided tour · overview.** The flow below follows token {walk.position} from the tokens through "
                f"all layers to the prediction. Press **Next** to walk through its {steps} stages in the order the "
                f"model computes them, block {walk.layer} included."
            )
        else:
            stage = walk.stages[state.step - 1]
            text.markdown(f"**Guided tour · {state.step} of {steps}: {plain(stage.title)}.** {plain(stage.sentence)}  \n"
                          f"*What to notice:* {plain(stage.notice)}")  # fmt: skip
        keys = walk.keys
        back.button("Previous", key="inside_previous_button", icon=":material/arrow_back:", width="stretch",
                    disabled=state.step == 0, on_click=_go, args=(-1, keys))  # fmt: skip
        forward.button("Next", key="inside_next_button", icon=":material/arrow_forward:", width="stretch",
                       disabled=state.step == steps, on_click=_go, args=(1, keys))  # fmt: skip


def _go(delta: int, keys: tuple[str, ...]) -> None:
    """One tour step: the step's stage expands (the overview step collapses everything)."""
    state = get_state().inside
    state.step = min(max(state.step + delta, 0), len(keys))
    state.stage = keys[state.step - 1] if state.step else None


def _toggle(key: str, keys: tuple[str, ...]) -> None:
    """Expand a stage (the tour continues from it), or collapse it."""
    state = get_state().inside
    if state.stage == key:
        state.stage = None
    else:
        state.stage, state.step = key, keys.index(key) + 1


# --- the overview -------------------------------------------------------------------------------


def _overview(run: Run, walk: Walkthrough, flow: Overview) -> None:
    figure = overview_figure(flow, walk.layer)
    st.plotly_chart(figure, key=OVERVIEW_CHART, on_select=_on_layer_click, selection_mode="points",
                    width="stretch", config=_CHART_CONFIG)  # fmt: skip
    note, button = st.columns([4, 1], vertical_alignment="center")
    note.caption(
        "Grey: the residual stream carried from layer to layer; blue: what attention added; pink: what the FFN added "
        "(ALTI shares of each layer's output; layer 0's attention fed by the tokens it read). Click a layer's square "
        "to walk through its block."
    )
    if button.button(f"Layer {walk.layer} in the Explorer", key="inside_explorer_button", icon=":material/account_tree:",
                     width="stretch"):  # fmt: skip
        frame.open_in_explorer(selected=str(NodeId("I", walk.layer, walk.position)))


def _on_layer_click() -> None:
    """A click on a layer's square walks through that block (other points carry no layer)."""
    layer = clicked_point(st.session_state.get(OVERVIEW_CHART))
    if isinstance(layer, int):
        get_state().inside.layer = layer


# --- stages -------------------------------------------------------------------------------------


def _stage(walk: Walkthrough, stage: Stage) -> None:
    expanded = get_state().inside.stage == stage.key
    with st.container(border=True):
        text, button = st.columns([8, 1], vertical_alignment="center")
        text.markdown(f"**{plain(stage.title)}** · {plain(stage.sentence)}")
        button.button(
            "Collapse" if expanded else "Expand", key=f"inside_{stage.key}_button", width="stretch",
            icon=":material/unfold_less:" if expanded else ":material/unfold_more:",
            on_click=_toggle, args=(stage.key, walk.keys),
        )  # fmt: skip
        st.plotly_chart(strip_figure(stage), key=f"inside_{stage.key}_strip", width="stretch", config=_CHART_CONFIG)
        if not expanded:
            return
        st.latex(stage.formula)
        st.caption(f"What to notice: {plain(stage.notice)}")
        detail = stage_sampling_figure(walk) if stage.key == "sampling" else detail_figure(stage)
        if detail is not None:
            st.plotly_chart(detail, key=f"inside_{stage.key}_detail", width="stretch", config=_CHART_CONFIG)


def _export(run: Run, walk: Walkthrough, flow: Overview) -> None:
    with st.popover("Export", icon=":material/download:"):
        st.download_button(
            "The whole walk-through (HTML)", data=partial(_page_bytes, walk, flow, run.prompt),
            file_name=f"{safe_stem(f'inside-{walk.model}-L{walk.layer}-H{walk.head}-token{walk.position}')}.html",
            mime="text/html", key="inside_export_button", width="stretch", on_click="ignore",
            help="One standalone page (opens offline): the flow and every stage, expanded, with formulas.",
        )  # fmt: skip


def _page_bytes(walk: Walkthrough, flow: Overview, prompt: str) -> bytes:
    return walkthrough_page(walk, flow, prompt).encode("utf-8")

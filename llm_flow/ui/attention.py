"""The Attention page: BertViz's head, model and neuron views over the active Run, weighted by
attention, by the norm-based view or by ALTI contributions, usable at 1,000 tokens.

Nothing here re-runs the model except, for the neuron view, the layer's own block up to its
queries and keys (once per Run and layer). Clicking a token (head view) isolates its lines;
clicking a tile (model view) opens that layer and head in the head view; any head can be opened
in the Explorer's route panel.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import streamlit as st

from llm_flow.checks import PAIR_PARTS
from llm_flow.errors import LlmFlowError
from llm_flow.export import table_csv
from llm_flow.figures.attention import (
    head_view_figure,
    model_view_figure,
    neuron_view_figure,
)
from llm_flow.models.run import Run
from llm_flow.routes.graph import build_graph
from llm_flow.routes.nodes import EdgeId, NodeId
from llm_flow.ui import frame, keys
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import Analysis
from llm_flow.ui.widgets import token_slider
from llm_flow.views.attention import attention_table, attention_view, token_window
from llm_flow.views.attention_scores import neuron_table, neuron_view

VIEW = "attention_view"
WEIGHT = "attention_weight"
LAYER = "attention_layer"
LAYERS = "attention_layers"
HEADS = "attention_heads"
HEAD = "attention_head"
WINDOW = "attention_window"
WINDOW_CUT_TO = "attention_window_cut_to"  # the prompt length the window equals, if it does
TOP_K = "attention_top_k"
AGGREGATE = "attention_aggregate"
SPLIT = "attention_split"
PART = "attention_part"
FOCUS = "attention_focus"  # head view: the query token whose lines alone are drawn (or None)
PENDING_TOKEN = "attention_pending_token"  # a token another page asked for, set before the slider draws
CHART = "attention_chart"

VIEWS = {"head": "Head view", "model": "Model view", "neuron": "Neuron view"}
WEIGHTINGS = {"attention": "Attention weight", "norm": "Norm-based", "alti": "ALTI contribution"}
AGGREGATES = {"": "each head", "mean": "mean of heads", "max": "max of heads"}
DEFAULT_WINDOW = {"head": 48, "model": 24, "neuron": 64}
_HELP = {
    "attention": "Where each head looked: its attention weight A[h, i, j].",
    "norm": "Attention times the size of what the head moved: A[h, i, j] · ‖(v_j + b_V) W_O[h]‖₂ "
            "(Kobayashi et al. 2020, Euclidean norm). A strong weight on a token whose value vector is "
            "tiny moves almost nothing.",
    "alti": "What actually reached the residual stream: the share of resid_mid[i] carried from token j by "
            "head h (ALTI, the same numbers as the route graph). The residual keeps the rest.",
}  # fmt: skip


def attention_page(analysis: Analysis) -> None:
    run = analysis.run
    if run is None:
        st.info("Choose a model and a prompt in the sidebar to begin.")
        return
    _init_state(run)
    if st.session_state.get(PENDING_TOKEN) is not None:
        st.session_state[keys.TARGET] = st.session_state.pop(PENDING_TOKEN) % run.n_tokens
    view = _controls(run)
    try:
        with st.spinner(_working_message(view)):
            figure, table, title = _built(run, view)
    except LlmFlowError as exc:
        st.error(str(exc))
        return
    st.caption(_caption(run, view))
    selectable = view != "neuron"
    st.plotly_chart(
        figure, key=CHART, width="content", height=int(figure.layout.height), theme=None,
        on_select=_on_click if selectable else "ignore", selection_mode="points",
        config={"displaylogo": False, "scrollZoom": False},
    )  # fmt: skip
    _explorer_link(run, analysis)
    _exports(run, figure, table, title, view)


# --- state and controls ------------------------------------------------------------------------


def _init_state(run: Run) -> None:
    """Defaults on first visit, and values that no longer fit this Run put back in range."""
    state = st.session_state
    info = run.model.info
    state.setdefault(VIEW, "head")
    state.setdefault(WEIGHT, "attention")
    state.setdefault(AGGREGATE, "")
    state.setdefault(PART, "all")
    state.setdefault(TOP_K, 0)
    state.setdefault(SPLIT, 0)
    if not 0 <= state.get(LAYER, -1) < info.n_layers:
        state[LAYER] = info.n_layers // 2
    if not 0 <= state.get(HEAD, -1) < info.n_heads:
        state[HEAD] = 0
    for key, count in ((HEADS, info.n_heads), (LAYERS, info.n_layers)):
        chosen = [i for i in state.get(key, []) if 0 <= i < count]
        state[key] = chosen or list(range(count))
    # A window cut down to a short prompt's length means "all of it": a longer prompt gets the
    # default window again rather than a few tokens of its end.
    cut = state.get(WINDOW_CUT_TO)
    if not 1 <= state.get(WINDOW, 0) <= run.n_tokens or state[WINDOW] == cut != run.n_tokens:
        state[WINDOW] = min(DEFAULT_WINDOW[state[VIEW]], run.n_tokens)
    state[WINDOW_CUT_TO] = run.n_tokens if state[WINDOW] == run.n_tokens else None
    if not 0 <= state[SPLIT] < run.n_tokens:
        state[SPLIT] = 0
    if state.get(FOCUS) is not None and not 0 <= state[FOCUS] < run.n_tokens:
        state[FOCUS] = None


def _controls(run: Run) -> str:
    info = run.model.info
    top = st.columns([2, 3, 2, 3])
    view = top[0].radio("View", list(VIEWS), key=VIEW, format_func=VIEWS.get, horizontal=True)
    top[1].radio(
        "Weighting", list(WEIGHTINGS), key=WEIGHT, format_func=WEIGHTINGS.get, horizontal=True,
        disabled=view == "neuron", help=" ".join(_HELP.values()),
    )  # fmt: skip
    top[2].selectbox("Layer", range(info.n_layers), key=LAYER, disabled=view == "model")
    top[3].selectbox(
        "Head", range(info.n_heads), key=HEAD,
        help="The neuron view's head, and the head the Explorer button opens.",
    )  # fmt: skip
    token_slider(run, "Token", help="The neuron view's query, the centre of the window, and the Explorer's token (shared with it).")
    with st.expander("Window, heads and sentence pairs", expanded=run.n_tokens > 64):
        row = st.columns(4)
        row[0].number_input(
            "Window (tokens)", 1, run.n_tokens, key=WINDOW,
            help="How many consecutive tokens around the chosen token are drawn. Weight to earlier "
                 "tokens is summed as 'before the window'.",
        )  # fmt: skip
        row[1].number_input("Top-k sources (0 = all)", 0, run.n_tokens, key=TOP_K,
                            help="Keep the k strongest sources of each query (per head).")  # fmt: skip
        row[2].selectbox("Heads as", list(AGGREGATES), key=AGGREGATE, format_func=AGGREGATES.get,
                         disabled=view == "neuron")  # fmt: skip
        row[3].multiselect("Heads shown", range(info.n_heads), key=HEADS, disabled=view == "neuron")
        if view == "model":
            st.multiselect("Layers shown", range(info.n_layers), key=LAYERS)
        pair = st.columns(2)
        pair[0].number_input(
            "Sentence B starts at token (0 = no split)", 0, run.n_tokens - 1, key=SPLIT, disabled=view == "neuron",
            help="Marks a sentence pair (BertViz's sentence A / B) at this token.",
        )  # fmt: skip
        pair[1].selectbox("Show", PAIR_PARTS, key=PART, disabled=view == "neuron" or not st.session_state[SPLIT],
                          help="Keep only queries of one sentence reading tokens of one sentence.")  # fmt: skip
    return view


def _settings(run: Run, view: str) -> dict:
    """Everything the figure depends on, from the widgets."""
    state = st.session_state
    split = state[SPLIT] or None
    return dict(
        view=view, weighting=state[WEIGHT], layer=state[LAYER], head=state[HEAD], token=state[keys.TARGET],
        window=state[WINDOW], top_k=state[TOP_K] or None, aggregate=state[AGGREGATE] or None,
        heads=tuple(state[HEADS]), layers=tuple(state[LAYERS]), split=split,
        part=state[PART] if split else "all", focus=state.get(FOCUS) if view == "head" else None,
    )  # fmt: skip


# --- building ----------------------------------------------------------------------------------


def _built(run: Run, view: str):
    """The figure, its numbers and its export title; rebuilt only when a setting changed."""
    settings = _settings(run, view)
    return run.derived(AttentionFigure(**settings), partial(_build, run, **settings))


@dataclass(frozen=True)
class AttentionFigure:
    """Key of a built figure in the Run's derived store: every setting `_build` takes. Figures
    are cheap to rebuild and one per slider position, so only the last few stay."""

    keep: ClassVar[int] = 8
    view: str
    weighting: str
    layer: int
    head: int
    token: int
    window: int
    top_k: int | None
    aggregate: str | None
    heads: tuple[int, ...]
    layers: tuple[int, ...]
    split: str | None
    part: str
    focus: int | None


def _build(run: Run, view, weighting, layer, head, token, window, top_k, aggregate, heads, layers, split, part, focus):
    tokens = token_window(run, token, window)
    model = html.escape(run.model.name)
    if view == "neuron":
        data = neuron_view(run, layer, head, token, window=tokens, top_k=top_k)
        figure = neuron_view_figure(data)
        return figure, neuron_table(data), f"{model} · {figure.layout.title.text}"
    options = dict(heads=list(heads), weighting=weighting, window=tokens, top_k=top_k, aggregate=aggregate,
                   split=split, part=part)  # fmt: skip
    if view == "head":
        data = attention_view(run, layers=[layer], **options)
        if focus is not None and focus not in data.positions:
            focus = None
        figure = head_view_figure(data, focus=focus)
    else:
        data = attention_view(run, layers=list(layers), **options)
        figure = model_view_figure(data)
    return figure, attention_table(data), f"{model} · {figure.layout.title.text}"


def _working_message(view: str) -> str:
    if view == "neuron":
        return "Computing this layer's queries and keys (once per layer)…"
    return "Drawing…"


def _caption(run: Run, view: str) -> str:
    state = st.session_state
    if view == "neuron":
        return ("Per source token: its key (after rotary embeddings; the key head serving this query head "
                "under grouped-query attention), the product with the query, the scaled score and the softmax. "
                "Hover a cell for its value.")  # fmt: skip
    shade = "1 = full strength" if state[WEIGHT] == "attention" else "full strength from the 99th percentile shown"
    text = f"{_HELP[state[WEIGHT]]} ({shade}.)"
    if view == "head":
        focus = state.get(FOCUS)
        text += " Click a legend entry to hide a head; click a token to keep only its lines"
        text += f" (now token {focus}; click it again for all)." if focus is not None else "."
    else:
        text += " Click a tile to open that layer and head in the head view."
    return text


# --- clicks, Explorer, exports -----------------------------------------------------------------


def open_head(layer: int, head: int, token: int) -> None:
    """Show one head in the head view with `token`'s lines, e.g. from the Explorer's edge panel.
    Call it from a page body (a button returning True), not from a widget callback."""
    state = st.session_state
    state[VIEW], state[LAYER], state[HEAD], state[HEADS], state[AGGREGATE] = "head", layer, head, [head], ""
    state[FOCUS] = state[PENDING_TOKEN] = token
    st.switch_page(frame.PAGES["attention"])


def _on_click() -> None:
    """Head view: a token isolates its lines (again: all lines). Model view: a tile opens that
    layer and head in the head view."""
    point = clicked_point(st.session_state.get(CHART))
    if point is None:
        return
    state = st.session_state
    if isinstance(point, list) and len(point) == 2:
        layer, head = point
        state[VIEW], state[LAYER] = "head", layer
        if head >= 0:
            state[HEAD], state[HEADS], state[AGGREGATE] = head, [head], ""
        state[FOCUS] = None
    elif isinstance(point, int):
        state[FOCUS] = None if state.get(FOCUS) == point else point
        state[keys.TARGET] = point


def clicked_point(chart_state):
    """The customdata of the first clicked point: a token position (head view) or [layer, head]
    (model view); None when nothing usable was clicked."""
    try:
        points = chart_state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (int, float)):
            return int(data)
        if isinstance(data, list) and len(data) == 2 and all(isinstance(x, (int, float)) for x in data):
            return [int(x) for x in data]
    return None


def explorer_edge(run: Run, layer: int, head: int, token: int, threshold: float, renormalize: bool) -> str | None:
    """The route-graph edge into ``token`` at ``layer`` that ``head`` contributes most to, if the
    route for ``token`` keeps it; else None."""
    graph = build_graph(run, token, threshold, renormalize)
    target = NodeId("I" if run.parallel else "A", layer, token)
    edges = [(u, data) for u, _, data in graph.in_edges(str(target), data=True) if data["kind"] == "attention"]
    if not edges:
        return None
    source, _ = max(edges, key=lambda edge: edge[1]["heads"][head])
    return str(EdgeId(NodeId.parse(source), target))


def _explorer_link(run: Run, analysis: Analysis) -> None:
    state = st.session_state
    layer, head, token = state[LAYER], state[HEAD], state[keys.TARGET]
    label = f"Open L{layer} H{head} at token {token} in the Explorer"
    if not st.button(label, icon=":material/account_tree:", key="attention_explorer_button"):
        return
    edge = explorer_edge(run, layer, head, token, analysis.threshold, analysis.renormalize)
    if edge is None:
        st.warning(
            f"The route of token {token} keeps no attention edge into layer {layer} at threshold "
            f"{analysis.threshold:g}: lower the threshold in the sidebar, or pick another layer or token."
        )
        return
    state[keys.HEAD] = head
    frame.open_in_explorer(selected=edge)  # the token widget here is the shared target already


def _exports(run: Run, figure, table, title: str, view: str) -> None:
    state = st.session_state
    stem = f"attention-{view}-{run.model.name}-L{state[LAYER]}-{state[WEIGHT]}"
    with st.popover("Export", icon=":material/download:"):
        figure_downloads(figure, title, stem, key="attention_export")
        st.download_button(
            "Numbers as CSV", data=partial(table_csv, table), file_name=f"{safe_stem(stem)}.csv", mime="text/csv",
            key="attention_export_csv_button", width="stretch", on_click="ignore",
        )  # fmt: skip

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

from llm_flow.validation import PAIR_PARTS
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
from llm_flow.ui import frame
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.frame import Analysis
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.seq2seq_attention import seq2seq_attention_page
from llm_flow.ui.state import HEAD_AGGREGATES, bind, get_state
from llm_flow.ui.widgets import fit_layer_and_head, token_slider
from llm_flow.views.attention import attention_table, attention_view, token_window
from llm_flow.views.attention_scores import neuron_table, neuron_view

CHART = "attention_chart"  # the plotly chart's selection state (Streamlit's own)

VIEWS = {"head": "Head view", "model": "Model view", "neuron": "Neuron view"}
WEIGHTINGS = {"attention": "Attention weight", "norm": "Norm-based", "alti": "ALTI contribution"}
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
    if isinstance(run, Seq2SeqRun):
        seq2seq_attention_page(run)
        return
    _fit_to_run(run)
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


def _fit_to_run(run: Run) -> None:
    """Values that no longer fit this Run (another model, a shorter prompt) back in range;
    a value a link asked for that does not fit is reported."""
    state = get_state().attention
    info = run.model.info
    notices = fit_layer_and_head(run, state)
    for name, count in (("heads", info.n_heads), ("layers", info.n_layers)):
        chosen = getattr(state, name)
        if chosen is not None:
            kept = tuple(i for i in chosen if 0 <= i < count)
            setattr(state, name, kept or None)
    if state.window is not None and state.window > run.n_tokens:
        state.window = None  # the whole of a shorter prompt; a longer one gets the default again
    if not 0 <= state.split < run.n_tokens:
        state.split = 0
    if state.focus is not None and not 0 <= state.focus < run.n_tokens:
        state.focus = None
    if notices:
        st.warning(" ".join(notices) + " Showing the nearest valid view.")


def shown_layer(run: Run) -> int:
    """The layer drawn: the user's, else the middle one (kept out of the state, and so out of
    links, until the user chooses)."""
    chosen = get_state().attention.layer
    return run.model.info.n_layers // 2 if chosen is None else chosen


def window(run: Run, view: str) -> int:
    """The tokens drawn: the user's window, else the view's default, never more than the prompt."""
    chosen = get_state().attention.window
    return min(chosen if chosen is not None else DEFAULT_WINDOW[view], run.n_tokens)


def _controls(run: Run) -> str:
    info = run.model.info
    state = get_state().attention
    top = st.columns([2, 3, 2, 3])
    top[0].radio("View", list(VIEWS), format_func=VIEWS.get, horizontal=True, **bind("attention.view"))
    view = state.view
    top[1].radio(
        "Weighting", list(WEIGHTINGS), format_func=WEIGHTINGS.get, horizontal=True,
        disabled=view == "neuron", help=" ".join(_HELP.values()), **bind("attention.weighting"),
    )  # fmt: skip
    top[2].selectbox("Layer", range(info.n_layers), disabled=view == "model",
                     **bind("attention.layer", to_widget=lambda _: shown_layer(run)))  # fmt: skip
    top[3].selectbox(
        "Head", range(info.n_heads), help="The neuron view's head, and the head the Explorer button opens.",
        **bind("attention.head"),
    )  # fmt: skip
    token_slider(run, "Token", help="The neuron view's query, the centre of the window, and the Explorer's token (shared with it).")
    all_heads, all_layers = tuple(range(info.n_heads)), tuple(range(info.n_layers))
    with st.expander("Window, heads and sentence pairs", expanded=run.n_tokens > 64):
        row = st.columns(4)
        row[0].number_input(
            "Window (tokens)", 1, run.n_tokens,
            help="How many consecutive tokens around the chosen token are drawn. Weight to earlier "
                 "tokens is summed as 'before the window'.",
            **bind("attention.window", to_widget=lambda _: window(run, view)),
        )  # fmt: skip
        row[1].number_input("Top-k sources (0 = all)", 0, run.n_tokens, help="Keep the k strongest sources of each query (per head).",
                            **bind("attention.top_k", to_widget=lambda k: min(k, run.n_tokens)))  # fmt: skip
        row[2].selectbox("Heads as", list(HEAD_AGGREGATES), format_func=HEAD_AGGREGATES.get, disabled=view == "neuron",
                         **bind("attention.aggregate"))  # fmt: skip
        row[3].multiselect("Heads shown", all_heads, disabled=view == "neuron", **bind(
            "attention.heads", to_widget=lambda h: list(h or all_heads), from_widget=_all_is_none(all_heads)))  # fmt: skip
        if view == "model":
            st.multiselect("Layers shown", all_layers, **bind(
                "attention.layers", to_widget=lambda h: list(h or all_layers), from_widget=_all_is_none(all_layers)))  # fmt: skip
        pair = st.columns(2)
        pair[0].number_input(
            "Sentence B starts at token (0 = no split)", 0, run.n_tokens - 1, disabled=view == "neuron",
            help="Marks a sentence pair (BertViz's sentence A / B) at this token.", **bind("attention.split"),
        )  # fmt: skip
        pair[1].selectbox("Show", PAIR_PARTS, disabled=view == "neuron" or not state.split,
                          help="Keep only queries of one sentence reading tokens of one sentence.",
                          **bind("attention.part"))  # fmt: skip
    return view


def _all_is_none(everything: tuple[int, ...]):
    """A multiselect's list as the state keeps it: None for all (or none: nothing to draw)."""
    return lambda chosen: None if not chosen or tuple(sorted(chosen)) == everything else tuple(sorted(chosen))


def _settings(run: Run, view: str) -> dict:
    """Everything the figure depends on, from the session's state."""
    state, route = get_state().attention, get_state().route
    split = state.split or None
    info = run.model.info
    return dict(
        view=view, weighting=state.weighting, layer=shown_layer(run), head=state.head, token=route.position,
        window=window(run, view), top_k=min(state.top_k, run.n_tokens) or None, aggregate=state.aggregate or None,
        heads=state.heads or tuple(range(info.n_heads)), layers=state.layers or tuple(range(info.n_layers)),
        split=split, part=state.part if split else "all", focus=state.focus if view == "head" else None,
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
    state = get_state().attention
    if view == "neuron":
        return ("Per source token: its key (after rotary embeddings; the key head serving this query head "
                "under grouped-query attention), the product with the query, the scaled score and the softmax. "
                "Hover a cell for its value.")  # fmt: skip
    shade = "1 = full strength" if state.weighting == "attention" else "full strength from the 99th percentile shown"
    text = f"{_HELP[state.weighting]} ({shade}.)"
    if view == "head":
        focus = state.focus
        text += " Click a legend entry to hide a head; click a token to keep only its lines"
        text += f" (now token {focus}; click it again for all)." if focus is not None else "."
    else:
        text += " Click a tile to open that layer and head in the head view."
    return text


# --- clicks, Explorer, exports -----------------------------------------------------------------


def open_head(layer: int, head: int, token: int) -> None:
    """Show one head in the head view with `token`'s lines, e.g. from the Explorer's edge panel.
    Call it from a page body (a button returning True), not from a widget callback."""
    state = get_state()
    attention = state.attention
    attention.view, attention.layer, attention.head, attention.heads, attention.aggregate = "head", layer, head, (head,), ""
    attention.focus = state.route.position = token
    from llm_flow.ui.pages import pages

    st.switch_page(pages()["attention"])


def _on_click() -> None:
    """Head view: a token isolates its lines (again: all lines). Model view: a tile opens that
    layer and head in the head view."""
    point = clicked_point(st.session_state.get(CHART))
    if point is None:
        return
    state = get_state().attention
    if isinstance(point, list) and len(point) == 2:
        layer, head = point
        state.view, state.layer = "head", layer
        if head >= 0:
            state.head, state.heads, state.aggregate = head, (head,), ""
        state.focus = None
    elif isinstance(point, int):
        state.focus = None if state.focus == point else point
        get_state().route.position = point


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
    state = get_state()
    layer, head, token = shown_layer(run), state.attention.head, state.route.position
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
    state.explorer.head = head
    frame.open_in_explorer(selected=edge)  # the token here is the shared position already


def _exports(run: Run, figure, table, title: str, view: str) -> None:
    state = get_state().attention
    stem = f"attention-{view}-{run.model.name}-L{shown_layer(run)}-{state.weighting}"
    with st.popover("Export", icon=":material/download:"):
        figure_downloads(figure, title, stem, key="attention_export")
        st.download_button(
            "Numbers as CSV", data=partial(table_csv, table), file_name=f"{safe_stem(stem)}.csv", mime="text/csv",
            key="attention_export_csv_button", width="stretch", on_click="ignore",
        )  # fmt: skip

"""The Attention page for an encoder–decoder: BertViz's three tabs (the encoder's self-attention,
the decoder's, and the cross-attention), each in the head or the model view.

The weights are the pair's `Seq2SeqRun`'s, rebuilt from its queries and keys (equal to
transformers' own ``output_attentions``); nothing is re-run. Cross-attention rows are the
decoder's tokens (its start token, then the target), columns the source tokens. The tab, view,
layer and heads are the session's attention settings, so they survive a page switch and travel
in links.
"""

from __future__ import annotations

import html
from functools import partial

import streamlit as st

from llm_flow.errors import LlmFlowError
from llm_flow.export import table_csv
from llm_flow.figures.attention import head_view_figure, model_view_figure
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.seq2seq import pair_header
from llm_flow.ui.state import HEAD_AGGREGATES, bind, get_state
from llm_flow.validation import SEQ2SEQ_STACKS
from llm_flow.views.attention import attention_table
from llm_flow.views.seq2seq_attention import seq2seq_views

CHART = "seq2seq_attention_chart"  # the plotly chart's selection state (Streamlit's own)
TABS = {"encoder": "Encoder self-attention", "decoder": "Decoder self-attention", "cross": "Cross-attention"}
VIEWS = {"head": "Head view", "model": "Model view"}
_READS = {
    "encoder": "each source token (left) reading every source token (right), both ways",
    "decoder": "each decoder token (left: the start token, then the target) reading itself and the tokens before it",
    "cross": "each decoder token (left: the start token, then the target) reading the source tokens (right)",
}


def seq2seq_attention_page(run: Seq2SeqRun) -> None:
    pair_header(run)
    stack, view, layer = _controls(run)
    state = get_state().attention
    try:
        ((name, data),) = seq2seq_views(
            run, [stack], layers=[layer] if view == "head" else None, heads=state.heads,
            top_k=state.top_k or None, aggregate=state.aggregate or None,
        )  # fmt: skip
    except LlmFlowError as exc:
        st.error(str(exc))
        return
    figure = head_view_figure(data) if view == "head" else model_view_figure(data)
    figure.update_layout(title_text=f"{TABS[stack]}: {figure.layout.title.text}")
    st.caption(f"{TABS[stack]}: {_READS[stack]}. Attention weights as transformers returns them (1 = full strength)."
               + (" Click a tile to open that layer and head in the head view." if view == "model" else ""))  # fmt: skip
    st.plotly_chart(
        figure, key=CHART, width="content", height=int(figure.layout.height), theme=None,
        on_select=_on_click if view == "model" else "ignore", selection_mode="points",
        config={"displaylogo": False, "scrollZoom": False},
    )  # fmt: skip
    _exports(run, figure, attention_table(data), stack, view)


def _controls(run: Seq2SeqRun) -> tuple[str, str, int]:
    """The tab, the view and the layer drawn (the middle one until the user chooses)."""
    state = get_state().attention
    st.segmented_control("Attention", list(TABS), format_func=TABS.get, required=True, **bind("attention.stack"))
    stack = state.stack
    n_layers, n_heads = run.n_layers_of(stack), run.n_heads_of(stack)
    if state.heads is not None:
        state.heads = tuple(h for h in state.heads if 0 <= h < n_heads) or None
    row = st.columns([2, 1, 2, 2, 1])
    view = "model" if state.view == "model" else "head"  # the neuron view is for decoder-only and encoder models
    row[0].radio("View", list(VIEWS), format_func=VIEWS.get, horizontal=True,
                 **bind("attention.view", to_widget=lambda _: view))  # fmt: skip
    layer = shown_layer(state.layer, n_layers)
    row[1].selectbox("Layer", range(n_layers), disabled=view == "model",
                     **bind("attention.layer", to_widget=lambda _: layer))  # fmt: skip
    everything = tuple(range(n_heads))
    row[2].multiselect("Heads shown", everything, **bind(
        "attention.heads", to_widget=lambda h: list(h or everything),
        from_widget=lambda chosen: None if not chosen or tuple(sorted(chosen)) == everything else tuple(sorted(chosen)),
    ))  # fmt: skip
    row[3].selectbox("Heads as", list(HEAD_AGGREGATES), format_func=HEAD_AGGREGATES.get, **bind("attention.aggregate"))
    n_sources = len(run.tokens_of(stack)[1])
    row[4].number_input("Top-k sources (0 = all)", 0, n_sources, help="Keep the k strongest sources of each query (per head).",
                        **bind("attention.top_k", to_widget=lambda k: min(k, n_sources)))  # fmt: skip
    if state.view == "neuron":
        st.caption("The neuron view is for decoder-only and encoder models; showing the head view.")
    return stack, view, layer


def shown_layer(chosen: int | None, n_layers: int) -> int:
    """The user's layer when the stack has it, else its middle layer (the encoder and the
    decoder may differ in depth)."""
    return chosen if chosen is not None and 0 <= chosen < n_layers else n_layers // 2


def _on_click() -> None:
    """A model-view tile opens that layer and head in the head view."""
    from llm_flow.ui.attention import clicked_point

    point = clicked_point(st.session_state.get(CHART))
    if isinstance(point, list):
        state = get_state().attention
        state.view, state.layer = "head", point[0]
        if point[1] >= 0:
            state.head, state.heads, state.aggregate = point[1], (point[1],), ""


def _exports(run: Seq2SeqRun, figure, table, stack: str, view: str) -> None:
    stem = f"attention-{stack}-{view}-{run.model.name}"
    with st.popover("Export", icon=":material/download:"):
        figure_downloads(figure, f"{html.escape(run.model.name)} · {figure.layout.title.text}", stem,
                         key="seq2seq_attention_export")  # fmt: skip
        st.download_button(
            "Numbers as CSV", data=partial(table_csv, table), file_name=f"{safe_stem(stem)}.csv", mime="text/csv",
            key="seq2seq_attention_export_csv_button", width="stretch", on_click="ignore",
        )  # fmt: skip


assert tuple(TABS) == SEQ2SEQ_STACKS  # one tab per stack the Run keeps

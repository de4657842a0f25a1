"""The dataset page: results of ``llm-flow dataset`` as heatmaps, two folders compared, and the
prompts in which one component mattered most, each one click away from the Explorer."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import streamlit as st

from llm_flow.dataset.reduce import POSITION_CLASSES, all_components
from llm_flow.dataset.results import (
    EXPERT_METRICS,
    METRICS,
    DatasetResults,
    component_grid,
    difference_grid,
    expert_grid,
    load_results,
    top_prompts,
)
from llm_flow.errors import LlmFlowError
from llm_flow.export import table_csv
from llm_flow.figures.dataset import component_heatmap, expert_heatmap
from llm_flow.ui import frame
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.explorer import clicked_element
from llm_flow.ui.frame import Analysis
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.seq2seq import not_for_pairs
from llm_flow.ui.state import bind, get_state
from llm_flow.views.tokens import display_token

CHART = "dataset_heatmap_chart"  # the plotly chart's selection state (Streamlit's own)

_VIEWS = ("first folder", "second folder", "difference (first − second)")
_TOP = 10


def dataset_page(analysis: Analysis) -> None:
    st.subheader("Routes over a dataset")
    if isinstance(analysis.run, Seq2SeqRun):
        not_for_pairs("Dataset", "Its statistics count the route graph's heads and FFN blocks over many prompts "
                      "(`llm-flow dataset`), and encoder–decoders have no route graph yet.")
        return
    if analysis.config.demo_mode:
        st.info("This is a demo: results folders cannot be opened here. Run `llm-flow dataset` and the app locally.")
        return
    st.caption(
        "Which heads and FFN blocks carry information in general: the statistics `llm-flow dataset` "
        "wrote for many prompts. Type its `--out` folder; add a second one to compare them."
    )
    state = get_state().dataset
    left, right = st.columns(2)
    left.text_input("Results folder", placeholder="e.g. results/code", **bind("dataset.folder"))
    right.text_input("Compare with (optional)", placeholder="e.g. results/prose", **bind("dataset.compare"))
    first = _results(state.folder, left)
    if first is None:
        return
    second = _results(state.compare, right) if state.compare.strip() else None
    _model_notice(first, analysis)
    if state.position_class not in POSITION_CLASSES:
        st.warning(f"There is no position class {state.position_class!r}; showing all.")
        state.position_class = "all"

    controls = st.columns([2, 2, 3])
    controls[0].radio("Metric", list(METRICS), horizontal=True, **bind("dataset.metric"),
                      format_func=lambda m: "frequency" if m == "frequency" else "mean contribution",
                      help="; ".join(f"{m.replace('_', ' ')}: {text}" for m, text in METRICS.items()))  # fmt: skip
    controls[1].selectbox("Position class", POSITION_CLASSES, **bind("dataset.position_class"),
                          help="; ".join(f"{name}: {text}" for name, text in first.metadata["position_classes"].items()))  # fmt: skip
    if state.view not in _VIEWS:
        state.view = _VIEWS[0]
    view = _VIEWS[0]
    if second is not None:
        controls[2].radio("Show", _VIEWS, horizontal=True, **bind("dataset.view"))
        view = state.view
    metric, position_class = state.metric, state.position_class
    try:
        if view == _VIEWS[2]:
            grid = difference_grid(first, second, metric, position_class)
        else:
            grid = component_grid(first if view == _VIEWS[0] else second, metric, position_class)
    except LlmFlowError as exc:
        st.error(str(exc))
        return

    components = [c.id for c in all_components(first.n_layers, first.n_heads)]
    if state.component not in components:
        if state.component is not None:
            st.warning(f"{state.component} is not a component of these results; showing {components[0]}.")
        state.component = components[0]
    chart_column, prompts_column = st.columns([3, 2], gap="medium")
    with chart_column:
        figure = component_heatmap(grid, difference=view == _VIEWS[2], selected=state.component)
        st.plotly_chart(figure, key=CHART, on_select=_on_click, selection_mode="points", width="stretch",
                        height=int(figure.layout.height), config={"displaylogo": False})  # fmt: skip
        _exports(figure, grid, first if view != _VIEWS[1] else second)
        st.caption(f"{first.metadata['prompts']['graphs']} route graphs in {first.folder.name}"
                   + (f", {second.metadata['prompts']['graphs']} in {second.folder.name}" if second else "")
                   + ". Click a cell to list the prompts where that component matters most.")  # fmt: skip
    with prompts_column:
        st.selectbox("Component", components, **bind("dataset.component"),
                     help="Heads L{layer}.H{head}, FFN blocks L{layer}.FFN, residual streams L{layer}.res")  # fmt: skip
        for field, results in zip(("prompt", "prompt_compare"), (first, second) if second is not None else (first,)):
            _top_prompts(results, state.component, position_class, field, several=second is not None)
    with_experts = [r for r in ((first, second) if second is not None else (first,)) if not r.experts.empty]
    if with_experts:
        _experts(with_experts)


def _experts(folders: list[DatasetResults]) -> None:
    """Mixtures of experts: per layer and expert, how often the router chose it at the explained
    positions and what it gave the FFN node there; one heatmap per folder."""
    st.markdown("**Experts**")
    st.caption(
        "Per layer and expert, at the explained position of every route graph: how often the router "
        "chose the expert, its mean share of the FFN node when chosen (the same proximity as every "
        "part, over the node's experts), and its part of that node's weight on the route."
    )
    state = get_state().dataset
    st.radio("Expert metric", list(EXPERT_METRICS), horizontal=True, **bind("dataset.expert_metric"),
             format_func=lambda m: m.replace("_", " "),
             help="; ".join(f"{m.replace('_', ' ')}: {text}" for m, text in EXPERT_METRICS.items()))  # fmt: skip
    for number, (column, results) in enumerate(zip(st.columns(len(folders)), folders)):
        figure = expert_heatmap(expert_grid(results, state.expert_metric))
        column.plotly_chart(figure, width="stretch", height=int(figure.layout.height),
                            config={"displaylogo": False}, key=f"dataset_experts_chart_{number}")  # fmt: skip
        column.download_button(
            f"Expert statistics of {results.folder.name} as CSV", data=partial(table_csv, results.experts),
            file_name=f"{safe_stem(results.folder.name)}-experts.csv", mime="text/csv",
            key=f"dataset_experts_csv_button_{number}", on_click="ignore",
        )  # fmt: skip


def _exports(figure, grid, results: DatasetResults) -> None:
    stem = f"dataset-{grid.title}-{grid.metric}-{grid.position_class}"
    with st.popover("Export", icon=":material/download:"):
        figure_downloads(figure, f"{grid.title}: {grid.metric.replace('_', ' ')}", stem, key="dataset_export")
        st.download_button(
            f"Statistics of {results.folder.name} as CSV", data=partial(table_csv, results.components),
            file_name=f"{safe_stem(results.folder.name)}-components.csv", mime="text/csv",
            key="dataset_export_csv_button", width="stretch", on_click="ignore",
        )  # fmt: skip


def _results(path: str, where) -> DatasetResults | None:
    """The folder typed in `where`, or None with the reason shown there."""
    path = path.strip()
    if not path:
        where.info("Type the folder that `llm-flow dataset --out` wrote.")
        return None
    try:
        return _load(str(Path(path).expanduser().resolve()), _stamp(path))
    except LlmFlowError as exc:
        where.error(str(exc))
        return None


def _stamp(path: str) -> float:
    """Reload when the folder's metadata changes (a run added prompts)."""
    try:
        return (Path(path).expanduser() / "metadata.json").stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(max_entries=8, show_spinner="Reading the results…")
def _load(path: str, stamp: float) -> DatasetResults:
    return load_results(path)


def _model_notice(results: DatasetResults, analysis: Analysis) -> None:
    made_with = results.metadata["config"]["model"]
    if analysis.model is not None and analysis.model.name != made_with:
        st.warning(
            f"These results were made with {made_with}; the Explorer shows {analysis.model.name}. "
            f"Choose {made_with} in the sidebar to open a prompt with the same model."
        )


def _top_prompts(results: DatasetResults, component: str, position_class: str, field: str, several: bool) -> None:
    """The prompts where `component` contributed most, strongest first; the chosen one (the
    session's ``dataset.<field>``, the top row unless the user picked another) opens in the
    Explorer."""
    table = top_prompts(results, component, position_class, _TOP)
    title = f"Where {component} matters most" + (f" in {results.folder.name}" if several else "")
    st.markdown(f"**{title}**")
    if table.empty:
        st.caption("It has no part in any route of this folder (for this position class).")
        return
    shown = table.assign(
        target=[f"{t}: {display_token(tok)}" for t, tok in zip(table["top_target"], table["target_token"])]
    )[["prompt_id", "contribution", "routes", "target", "text"]]
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_config={"contribution": st.column_config.NumberColumn(format="%.3f")})  # fmt: skip
    state = get_state().dataset
    ids = [str(pid) for pid in table["prompt_id"]]
    listed = (str(results.folder), component, position_class)
    if getattr(state, f"{field}_list") != listed or getattr(state, field) not in ids:
        # a new list opens on its top row, not on whichever row the last choice happens to be
        setattr(state, f"{field}_list", listed)
        setattr(state, field, ids[0])
    by_id = table.assign(prompt_id=ids).set_index("prompt_id")
    labels = {pid: f"{pid}: {_short(by_id.loc[pid, 'text'])}" for pid in ids}
    st.selectbox("Prompt", ids, format_func=labels.get, **bind(f"dataset.{field}"))
    row = by_id.loc[getattr(state, field)]
    if st.button("Open in the Explorer", key=f"dataset_{field}_open_button", icon=":material/account_tree:",
                 help=f"Analyse this prompt in the Explorer, on token {row['top_target']}, the one whose route "
                      f"{component} contributed most to"):  # fmt: skip
        frame.open_prompt(row["text"], position=int(row["top_target"]))


def _on_click() -> None:
    """A click on a heatmap cell selects its component (the cell's customdata)."""
    element = clicked_element(st.session_state.get(CHART))
    if element is not None:
        get_state().dataset.component = element


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"

"""The dataset page: results of ``llm-flow dataset`` as heatmaps, two folders compared, and the
prompts in which one component mattered most, each one click away from the Explorer."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import streamlit as st

from llm_flow.dataset.reduce import POSITION_CLASSES, all_components
from llm_flow.dataset.results import (
    METRICS,
    DatasetResults,
    component_grid,
    difference_grid,
    load_results,
    top_prompts,
)
from llm_flow.errors import LlmFlowError
from llm_flow.export import table_csv
from llm_flow.figures.dataset import component_heatmap
from llm_flow.ui import frame
from llm_flow.ui.downloads import figure_downloads, safe_stem
from llm_flow.ui.explorer import clicked_element
from llm_flow.ui.frame import Analysis
from llm_flow.views.tokens import display_token

FOLDER = "dataset_folder"
COMPARE = "dataset_compare"
METRIC = "dataset_metric"
POSITION_CLASS = "dataset_class"
VIEW = "dataset_view"
COMPONENT = "dataset_component"
PROMPT = "dataset_prompt"
CHART = "dataset_heatmap_chart"

_VIEWS = ("first folder", "second folder", "difference (first − second)")
_TOP = 10


def dataset_page(analysis: Analysis) -> None:
    st.subheader("Routes over a dataset")
    if analysis.config.demo_mode:
        st.info("This is a demo: results folders cannot be opened here. Run `llm-flow dataset` and the app locally.")
        return
    st.caption(
        "Which heads and FFN blocks carry information in general: the statistics `llm-flow dataset` "
        "wrote for many prompts. Type its `--out` folder; add a second one to compare them."
    )
    left, right = st.columns(2)
    left.text_input("Results folder", key=FOLDER, placeholder="e.g. results/code")
    right.text_input("Compare with (optional)", key=COMPARE, placeholder="e.g. results/prose")
    first = _results(st.session_state.get(FOLDER, ""), left)
    if first is None:
        return
    second = _results(st.session_state.get(COMPARE, ""), right) if st.session_state.get(COMPARE, "").strip() else None
    _model_notice(first, analysis)

    controls = st.columns([2, 2, 3])
    controls[0].radio("Metric", list(METRICS), key=METRIC, horizontal=True,
                      format_func=lambda m: "frequency" if m == "frequency" else "mean contribution",
                      help="; ".join(f"{m.replace('_', ' ')}: {text}" for m, text in METRICS.items()))  # fmt: skip
    controls[1].selectbox("Position class", POSITION_CLASSES, key=POSITION_CLASS,
                          help="; ".join(f"{name}: {text}" for name, text in first.metadata["position_classes"].items()))  # fmt: skip
    view = _VIEWS[0]
    if second is not None:
        view = controls[2].radio("Show", _VIEWS, key=VIEW, horizontal=True)
    metric, position_class = st.session_state[METRIC], st.session_state[POSITION_CLASS]
    try:
        if view == _VIEWS[2]:
            grid = difference_grid(first, second, metric, position_class)
        else:
            grid = component_grid(first if view == _VIEWS[0] else second, metric, position_class)
    except LlmFlowError as exc:
        st.error(str(exc))
        return

    components = [c.id for c in all_components(first.n_layers, first.n_heads)]
    if st.session_state.get(COMPONENT) not in components:
        st.session_state[COMPONENT] = components[0]
    chart_column, prompts_column = st.columns([3, 2], gap="medium")
    with chart_column:
        figure = component_heatmap(grid, difference=view == _VIEWS[2], selected=st.session_state[COMPONENT])
        st.plotly_chart(figure, key=CHART, on_select=_on_click, selection_mode="points", width="stretch",
                        height=int(figure.layout.height), config={"displaylogo": False})  # fmt: skip
        _exports(figure, grid, first if view != _VIEWS[1] else second)
        st.caption(f"{first.metadata['prompts']['graphs']} route graphs in {first.folder.name}"
                   + (f", {second.metadata['prompts']['graphs']} in {second.folder.name}" if second else "")
                   + ". Click a cell to list the prompts where that component matters most.")  # fmt: skip
    with prompts_column:
        st.selectbox("Component", components, key=COMPONENT,
                     help="Heads L{layer}.H{head}, FFN blocks L{layer}.FFN, residual streams L{layer}.res")  # fmt: skip
        for index, results in enumerate((first, second) if second is not None else (first,)):
            _top_prompts(results, st.session_state[COMPONENT], position_class, index, several=second is not None)


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


def _top_prompts(results: DatasetResults, component: str, position_class: str, index: int, several: bool) -> None:
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
    key = f"{PROMPT}_{index}"
    listed = (str(results.folder), component, position_class)
    if st.session_state.get(f"{key}_list") != listed:  # a new list opens on its top row, not on
        st.session_state[f"{key}_list"] = listed  # whichever row the last choice now happens to be
        st.session_state[key] = table["prompt_id"].iloc[0]
    choice = st.selectbox("Prompt", list(table["prompt_id"]), key=key,
                          format_func=lambda pid: f"{pid}: {_short(table.set_index('prompt_id').loc[pid, 'text'])}")  # fmt: skip
    row = table.set_index("prompt_id").loc[choice]
    if st.button("Open in the Explorer", key=f"{key}_open_button", icon=":material/account_tree:",
                 help=f"Analyse this prompt in the Explorer, on token {row['top_target']}, the one whose route "
                      f"{component} contributed most to"):  # fmt: skip
        frame.open_prompt(row["text"], target=int(row["top_target"]))


def _on_click() -> None:
    """A click on a heatmap cell selects its component (the cell's customdata)."""
    element = clicked_element(st.session_state.get(CHART))
    if element is not None:
        st.session_state[COMPONENT] = element


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"

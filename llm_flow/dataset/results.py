"""Reading a results folder back, and the tables the figures and the page show.

Pure functions over pandas DataFrames: a metric per component as a layers x heads grid (plus
FFN and residual columns), the difference between two folders, and the prompts in which one
component mattered most.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llm_flow.dataset.reduce import POSITION_CLASSES, parse_component_id
from llm_flow.dataset.store import (
    COMPONENTS_FILE,
    COMPONENTS_SCHEMA,
    EXPERTS_FILE,
    EXPERTS_SCHEMA,
    METADATA_FILE,
    PARTS_DIR,
    PROMPT_COMPONENTS_FILE,
    PROMPT_COMPONENTS_SCHEMA,
    PROMPT_EXPERTS_FILE,
    PROMPT_EXPERTS_SCHEMA,
    PROMPTS_FILE,
    PROMPTS_SCHEMA,
    read_frame,
    read_metadata,
)
from llm_flow.display import Displayable
from llm_flow.errors import DatasetError

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: What a heatmap can show, and how the page names it.
METRICS = {
    "frequency": "how often on a route (share of route graphs)",
    "mean_contribution": "mean contribution per route graph",
}
#: What the experts' heatmap can show (mixtures of experts).
EXPERT_METRICS = {
    "selection_rate": "how often the router chose it at the explained position (share of route graphs)",
    "mean_share": "its mean share of the FFN node when chosen",
    "mean_contribution": "its part of the FFN node's route weight, per route graph",
}


@dataclass(frozen=True, eq=False)
class DatasetResults(Displayable):
    """A finished results folder, as tables.

    In a notebook: what was analysed and the components most often on a route; ``.show()``
    draws the layers x heads heatmap (with the FFN column), ``.to_frame()`` the per-component
    statistics."""

    folder: Path
    metadata: dict
    prompts: pd.DataFrame  # one row per prompt
    prompt_components: pd.DataFrame  # per prompt, component and position class
    components: pd.DataFrame  # per component and position class, over the dataset
    prompt_experts: pd.DataFrame  # mixtures of experts: per prompt, layer and expert (else empty)
    experts: pd.DataFrame  # mixtures of experts: per layer and expert, over the dataset (else empty)

    @property
    def n_layers(self) -> int:
        return int(self.metadata["model"]["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.metadata["model"]["n_heads"])

    @property
    def label(self) -> str:
        """``code (smollm2-135m, 24 prompts, last token, t = 0.04)``: what a figure title says."""
        config, counts = self.metadata["config"], self.metadata["prompts"]
        positions = "last token" if config["positions"] == "last" else "every token"
        return (
            f"{self.folder.name} ({config['model']}, {counts['ok']} prompts, {positions}, "
            f"t = {config['threshold']})"
        )

    def summary(self) -> dict[str, object]:
        rows = self.components[self.components["position_class"] == "all"]
        top = rows.sort_values(["frequency", "mean_contribution"], ascending=False, kind="stable")
        return {
            "results": self.label,
            "prompts": "{ok} analysed, {error} failed, {graphs} route graphs".format(**self.metadata["prompts"]),
            "most often on a route": top[["component", "frequency", "mean_contribution"]],
        }

    def figure(self, metric: str = "frequency", position_class: str = "all") -> "go.Figure":
        """`metric` and `position_class` as `component_grid` takes them."""
        from llm_flow.figures.dataset import component_heatmap

        return component_heatmap(component_grid(self, metric, position_class))

    def to_frame(self) -> pd.DataFrame:
        return self.components


def load_results(folder: str | os.PathLike[str]) -> DatasetResults:
    """Read a folder written by `analyse_dataset`; a clear `DatasetError` for anything else."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"no results folder at {folder}: give the --out folder of `llm-flow dataset`")
    if not (folder / METADATA_FILE).is_file():
        raise DatasetError(f"{folder} holds no llm-flow results ({METADATA_FILE} is missing)")
    metadata = read_metadata(folder)
    missing = [name for name in (PROMPTS_FILE, PROMPT_COMPONENTS_FILE, COMPONENTS_FILE) if not (folder / name).is_file()]
    if missing or (folder / PARTS_DIR).is_dir() or not metadata.get("model"):
        raise DatasetError(
            f"the run in {folder} did not finish ({', '.join(missing) or 'checkpoints left'}); run "
            "`llm-flow dataset` again with the same --out to finish it"
        )
    return DatasetResults(
        folder=folder,
        metadata=metadata,
        prompts=read_frame(folder / PROMPTS_FILE, PROMPTS_SCHEMA),
        prompt_components=read_frame(folder / PROMPT_COMPONENTS_FILE, PROMPT_COMPONENTS_SCHEMA),
        components=read_frame(folder / COMPONENTS_FILE, COMPONENTS_SCHEMA),
        prompt_experts=_optional(folder / PROMPT_EXPERTS_FILE, PROMPT_EXPERTS_SCHEMA),
        experts=_optional(folder / EXPERTS_FILE, EXPERTS_SCHEMA),
    )


def _optional(path: Path, schema) -> pd.DataFrame:
    """A table that folders written before it existed do not have: empty then."""
    return read_frame(path, schema) if path.is_file() else schema.empty_table().to_pandas()


@dataclass(frozen=True)
class ExpertGrid:
    """One metric per layer and expert of a mixture of experts (the shared expert last, if any)."""

    values: np.ndarray  # [layers with experts, columns]
    layers: list[int]
    experts: list[int]  # column labels: expert numbers, -1 for the shared expert
    metric: str
    title: str


def expert_grid(results: DatasetResults, metric: str = "selection_rate") -> ExpertGrid:
    """`metric` (one of EXPERT_METRICS) as a layers x experts grid; a DatasetError for results
    of a model without experts."""
    if metric not in EXPERT_METRICS:
        raise DatasetError(f"unknown expert metric {metric!r}: use one of {', '.join(EXPERT_METRICS)}")
    rows = results.experts
    if rows.empty:
        raise DatasetError(f"{results.folder.name} has no expert statistics: its model has no mixture-of-experts FFN")
    layers = sorted(set(rows["layer"].tolist()))
    experts = sorted(set(rows["expert"].tolist()), key=lambda e: (e < 0, e))
    values = np.zeros((len(layers), len(experts)))
    for layer, expert, value in rows[["layer", "expert", metric]].itertuples(index=False):
        values[layers.index(layer), experts.index(expert)] = value
    return ExpertGrid(values, layers, experts, metric, results.label)


@dataclass(frozen=True)
class ComponentGrid:
    """One metric for every component: heads as a [layers, heads] grid, FFN and residual per layer."""

    heads: np.ndarray  # [n_layers, n_heads]
    ffn: np.ndarray  # [n_layers]
    residual: np.ndarray  # [n_layers]
    metric: str
    position_class: str
    title: str


def component_grid(results: DatasetResults, metric: str = "frequency", position_class: str = "all") -> ComponentGrid:
    _check_choice(metric, position_class)
    rows = results.components[results.components["position_class"] == position_class]
    heads = np.zeros((results.n_layers, results.n_heads))
    ffn, residual = np.zeros(results.n_layers), np.zeros(results.n_layers)
    for kind, layer, head, value in rows[["kind", "layer", "head", metric]].itertuples(index=False):
        if kind == "head":
            heads[layer, head] = value
        else:
            (ffn if kind == "ffn" else residual)[layer] = value
    return ComponentGrid(heads, ffn, residual, metric, position_class, results.label)


def difference_grid(
    first: DatasetResults, second: DatasetResults, metric: str = "frequency", position_class: str = "all"
) -> ComponentGrid:
    """``first - second`` per component; both folders must come from models of the same shape."""
    if (first.n_layers, first.n_heads) != (second.n_layers, second.n_heads):
        raise DatasetError(
            f"cannot compare {first.folder.name} ({first.n_layers} layers x {first.n_heads} heads) with "
            f"{second.folder.name} ({second.n_layers} layers x {second.n_heads} heads): different models"
        )
    a, b = component_grid(first, metric, position_class), component_grid(second, metric, position_class)
    return ComponentGrid(
        a.heads - b.heads, a.ffn - b.ffn, a.residual - b.residual, metric, position_class,
        f"{first.folder.name} minus {second.folder.name}",
    )  # fmt: skip


def top_prompts(
    results: DatasetResults, component: str, position_class: str = "all", limit: int = 10
) -> pd.DataFrame:
    """The prompts in which `component` (``"L3.H5"``) contributed most, largest first.

    Columns: prompt_id, text, contribution (summed over the prompt's graphs), routes, n_targets,
    top_target (the target whose graph it contributed most to) and that target's token.
    """
    _check_choice("frequency", position_class)
    parse_component_id(component)  # a clear ArgumentError for a malformed id
    rows = results.prompt_components
    rows = rows[(rows["component"] == component) & (rows["position_class"] == position_class)]
    table = rows[["prompt_id", "contribution", "routes", "top_target"]].merge(
        results.prompts[["prompt_id", "text", "tokens", "n_targets"]], on="prompt_id"
    )
    table = table.sort_values(["contribution", "prompt_id"], ascending=[False, True], kind="stable").head(limit)
    table["target_token"] = [tokens[target] for tokens, target in zip(table["tokens"], table["top_target"])]
    columns = ["prompt_id", "text", "contribution", "routes", "n_targets", "top_target", "target_token"]
    return table[columns].reset_index(drop=True)


def _check_choice(metric: str, position_class: str) -> None:
    if metric not in METRICS:
        raise DatasetError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if position_class not in POSITION_CLASSES:
        raise DatasetError(f"unknown position class {position_class!r}: use one of {', '.join(POSITION_CLASSES)}")

"""A results folder: Parquet tables, a metadata file, and checkpoints that make runs resumable.

    DIR/metadata.json               settings, model, versions, counts, what the columns mean
    DIR/prompts.parquet             one row per prompt: id, text hash, text, tokens, status, error
    DIR/prompt_components.parquet   per prompt, every component with a part in its graphs
    DIR/components.parquet          per component and position class, over all "ok" prompts
    DIR/prompt_experts.parquet      mixtures of experts: per prompt, layer and expert
    DIR/experts.parquet             mixtures of experts: per layer and expert, over all "ok" prompts
    DIR/parts/                      checkpoints of a run in progress (gone once it finishes)

While a run works, finished prompts are written to ``parts/`` every few seconds; a run that is
stopped loses at most that much. The next run over the same folder reads what is there, skips
prompts already done (same id, same text hash), retries error rows, and at the end merges
everything into the tables (the expert tables are empty for a dense model). Rows are sorted (prompts by id, components by kind, layer,
head, position class) and nothing about the engine or the time is stored, so the files have the
same content whichever engine ran.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm_flow.dataset.reduce import CLASS_DESCRIPTIONS, KINDS, POSITION_CLASSES, all_components
from llm_flow.errors import DatasetError

if TYPE_CHECKING:
    from llm_flow.dataset.analyse import PromptResult

FORMAT = "llm-flow dataset results 1"
METADATA_FILE = "metadata.json"
PROMPTS_FILE = "prompts.parquet"
PROMPT_COMPONENTS_FILE = "prompt_components.parquet"
COMPONENTS_FILE = "components.parquet"
PROMPT_EXPERTS_FILE = "prompt_experts.parquet"
EXPERTS_FILE = "experts.parquet"
PARTS_DIR = "parts"

PROMPTS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("text_hash", pa.string()),
    ("text", pa.string()),
    ("status", pa.string()),  # "ok" or "error"
    ("error", pa.string()),  # null when ok
    ("n_tokens", pa.int32()),
    ("tokens", pa.list_(pa.string())),
    ("n_targets", pa.int32()),  # route graphs built for this prompt
])  # fmt: skip
PROMPT_COMPONENTS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("component", pa.string()),  # "L3.H5", "L3.FFN", "L3.res"
    ("kind", pa.string()),  # "head", "ffn", "residual"
    ("layer", pa.int32()),
    ("head", pa.int32()),  # -1 for FFN blocks and residuals
    ("position_class", pa.string()),
    ("routes", pa.int32()),  # graphs of this prompt where the component is on the route
    ("contribution", pa.float64()),  # its parts summed over this prompt's graphs
    ("top_target", pa.int32()),  # target position of the graph it contributed most to
])  # fmt: skip
COMPONENTS_SCHEMA = pa.schema([
    ("component", pa.string()),
    ("kind", pa.string()),
    ("layer", pa.int32()),
    ("head", pa.int32()),
    ("position_class", pa.string()),
    ("graphs", pa.int64()),  # route graphs over all "ok" prompts (the denominator)
    ("routes", pa.int64()),  # of those, graphs where the component is on the route
    ("frequency", pa.float64()),  # routes / graphs
    ("total_contribution", pa.float64()),
    ("mean_contribution", pa.float64()),  # total_contribution / graphs
])  # fmt: skip

PROMPT_EXPERTS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("layer", pa.int32()),
    ("expert", pa.int32()),  # -1: the shared expert every token uses (Qwen2-MoE)
    ("selected", pa.int32()),  # explained positions of this prompt whose router chose the expert
    ("share", pa.float64()),  # its shares of those positions' FFN nodes, summed
    ("contribution", pa.float64()),  # its part of those FFN nodes' route weights, summed
])  # fmt: skip
EXPERTS_SCHEMA = pa.schema([
    ("layer", pa.int32()),
    ("expert", pa.int32()),
    ("graphs", pa.int64()),
    ("selected", pa.int64()),
    ("selection_rate", pa.float64()),  # selected / graphs
    ("mean_share", pa.float64()),  # share / selected
    ("total_contribution", pa.float64()),
    ("mean_contribution", pa.float64()),  # total_contribution / graphs
])  # fmt: skip

COLUMN_DESCRIPTIONS = {
    "graphs": "route graphs built over all prompts with status ok (one per prompt and target)",
    "routes": "graphs in which the component has a part above the threshold",
    "frequency": "routes / graphs",
    "total_contribution": "the component's parts (edge weights after threshold and renormalisation) summed over all graphs",
    "mean_contribution": "total_contribution / graphs",
    "top_target": "the target position of the prompt's graph the component contributed most to",
    "expert": "mixtures of experts: the expert's number in its layer; -1 is the shared expert every token uses",
    "selected": "explained positions (one per graph) at which the router chose the expert in that layer",
    "selection_rate": "selected / graphs",
    "mean_share": (
        "the expert's share of the FFN node at the explained position (proximity, renormalised over "
        "the node's experts), averaged over the positions that chose it"
    ),
    "expert_contribution": (
        "experts.parquet total_contribution and mean_contribution: the weight of the kept edge "
        "M{l}_t -> I{l}_t (0 when not kept) times the expert's share, summed over graphs / per graph"
    ),
}

#: Settings that decide the numbers; a folder only takes more prompts made with the same ones.
RESUME_KEYS = ("model", "dtype", "positions", "threshold", "renormalize", "max_prompt_tokens")


@dataclass(frozen=True)
class Summary:
    """What a run did, and what the folder now holds."""

    folder: Path
    processed: int  # prompts analysed by this run
    skipped: int  # prompts already done in the folder
    ok: int  # prompts with status ok in the folder
    errors: int  # prompts with status error in the folder
    graphs: int  # route graphs behind the statistics
    first_error: str | None  # "id: message" of the first error row, for a one-line report


class ResultsWriter:
    """Opens `folder` for a run: checks its settings, knows what is done, checkpoints, merges."""

    def __init__(self, folder: str | os.PathLike[str], config: dict, checkpoint_seconds: float = 20.0) -> None:
        self.folder = Path(folder)
        self.config = config
        self.checkpoint_seconds = checkpoint_seconds
        previous = check_folder(self.folder, config)
        self.model_info: dict | None = previous.get("model") if previous else None
        prompts, _, _ = _stored_tables(self.folder, with_components=False)
        ok = prompts[prompts["status"] == "ok"]
        self.done = set(zip(ok["prompt_id"], ok["text_hash"]))
        self._buffer: list[PromptResult] = []
        self._last_flush = time.monotonic()
        self._processed = 0
        self._write_metadata(counts=previous.get("prompts") if previous else None)

    def set_model(self, info: dict) -> None:
        """Record the model's shape (needed for the full component grid) as soon as it is known."""
        if info != self.model_info:
            self.model_info = info
            self._write_metadata(counts=None)

    def add(self, result: PromptResult) -> None:
        self._buffer.append(result)
        self._processed += 1
        if time.monotonic() - self._last_flush >= self.checkpoint_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered results as one checkpoint part (components first, prompts last:
        a part counts only once its prompts file exists)."""
        if not self._buffer:
            return
        parts = self.folder / PARTS_DIR
        parts.mkdir(exist_ok=True)
        number = 1 + max((int(p.name.split("-")[1]) for p in parts.glob("part-*-prompts.parquet")), default=0)
        prompts, components, experts = _results_tables(self._buffer)
        _write(components, parts / f"part-{number:06d}-components.parquet")
        _write(experts, parts / f"part-{number:06d}-experts.parquet")
        _write(prompts, parts / f"part-{number:06d}-prompts.parquet")
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def finish(self, skipped: int) -> Summary:
        """Merge the folder's tables and checkpoints into the final, sorted tables."""
        self.flush()
        prompts, components, experts = _stored_tables(self.folder)
        if self.model_info is None:
            raise DatasetError(f"{self.folder}: no model shape recorded; run again to finish the folder")
        statistics = aggregate(prompts, components, self.model_info["n_layers"], self.model_info["n_heads"])
        expert_statistics = aggregate_experts(prompts, experts, self.model_info.get("n_experts", 0))
        _write(_table(prompts, PROMPTS_SCHEMA), self.folder / PROMPTS_FILE)
        _write(_table(components, PROMPT_COMPONENTS_SCHEMA), self.folder / PROMPT_COMPONENTS_FILE)
        _write(_table(statistics, COMPONENTS_SCHEMA), self.folder / COMPONENTS_FILE)
        _write(_table(experts, PROMPT_EXPERTS_SCHEMA), self.folder / PROMPT_EXPERTS_FILE)
        _write(_table(expert_statistics, EXPERTS_SCHEMA), self.folder / EXPERTS_FILE)
        ok = prompts["status"] == "ok"
        counts = {"ok": int(ok.sum()), "error": int((~ok).sum()), "graphs": int(prompts.loc[ok, "n_targets"].sum())}
        self._write_metadata(counts)
        shutil.rmtree(self.folder / PARTS_DIR, ignore_errors=True)
        errors = prompts[~ok]
        first_error = None if errors.empty else f"{errors.iloc[0]['prompt_id']}: {errors.iloc[0]['error']}"
        return Summary(self.folder, self._processed, skipped, counts["ok"], counts["error"], counts["graphs"], first_error)

    def _write_metadata(self, counts: dict | None) -> None:
        document = {
            "format": FORMAT,
            "config": self.config,
            "model": self.model_info,
            "prompts": counts,
            "versions": versions(),
            "position_classes": CLASS_DESCRIPTIONS,
            "columns": COLUMN_DESCRIPTIONS,
        }
        _atomic_text(self.folder / METADATA_FILE, json.dumps(document, indent=1, sort_keys=True) + "\n")


def aggregate(prompts: pd.DataFrame, components: pd.DataFrame, n_layers: int, n_heads: int) -> pd.DataFrame:
    """Per component and position class over the "ok" prompts; every component of the model
    appears, with zeros where it was never on a route."""
    ok = prompts.loc[prompts["status"] == "ok", "prompt_id"]
    graphs = int(prompts.loc[prompts["status"] == "ok", "n_targets"].sum())
    used = components[components["prompt_id"].isin(ok)]
    keys = ["component", "position_class"]
    sums = used.groupby(keys, sort=True)[["routes", "contribution"]].sum()
    grid = pd.DataFrame(
        [
            (c.id, c.kind, c.layer, c.head, position_class)
            for c in all_components(n_layers, n_heads)
            for position_class in POSITION_CLASSES
        ],
        columns=["component", "kind", "layer", "head", "position_class"],
    )
    table = grid.join(sums, on=keys).fillna({"routes": 0, "contribution": 0.0})
    table["graphs"] = graphs
    table["routes"] = table["routes"].astype("int64")
    table["frequency"] = table["routes"] / graphs if graphs else 0.0
    table["total_contribution"] = table["contribution"].astype("float64")
    table["mean_contribution"] = table["total_contribution"] / graphs if graphs else 0.0
    return table


def aggregate_experts(prompts: pd.DataFrame, experts: pd.DataFrame, n_experts: int) -> pd.DataFrame:
    """Per layer and expert over the "ok" prompts. Every expert of every layer that has experts
    appears (with zeros where the router never chose it), and the shared expert where there is one."""
    ok = prompts.loc[prompts["status"] == "ok", "prompt_id"]
    graphs = int(prompts.loc[prompts["status"] == "ok", "n_targets"].sum())
    used = experts[experts["prompt_id"].isin(ok)]
    sums = used.groupby(["layer", "expert"], sort=True)[["selected", "share", "contribution"]].sum()
    shared = set(used.loc[used["expert"] < 0, "layer"])
    keys = [(layer, expert) for layer in sorted(set(used["layer"])) for expert in range(n_experts)]
    keys += [(layer, -1) for layer in shared]
    table = pd.DataFrame(sorted(keys), columns=["layer", "expert"], dtype="int64")
    table = table.join(sums, on=["layer", "expert"]).fillna({"selected": 0, "share": 0.0, "contribution": 0.0})
    table["graphs"] = graphs
    table["selected"] = table["selected"].astype("int64")
    table["selection_rate"] = table["selected"] / graphs if graphs else 0.0
    chosen = table["selected"].where(table["selected"] > 0)
    table["mean_share"] = (table["share"] / chosen).fillna(0.0)
    table["total_contribution"] = table["contribution"].astype("float64")
    table["mean_contribution"] = table["total_contribution"] / graphs if graphs else 0.0
    return table


def versions() -> dict[str, str]:
    """The versions that decide the numbers (not Ray's: the engine must not change the files)."""
    found = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in ("llm-flow", "torch", "transformers", "transformer-lens", "pyarrow"):
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def check_folder(folder: str | os.PathLike[str], config: dict) -> dict | None:
    """Refuse, before any model loads, a folder that cannot take results made with `config`;
    create it if new. Returns its previous metadata (None for a new folder)."""
    folder = Path(folder)
    previous = _open_folder(folder)
    if previous is not None:
        _check_same_settings(folder, previous["config"], config)
    return previous


# --- reading and writing ------------------------------------------------------------------------


def _open_folder(folder: Path) -> dict | None:
    """The previous metadata of `folder`, None for a new or empty folder; refuse anything else."""
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"{folder} is a file; --out needs a folder (new, empty, or earlier results)")
    metadata = folder / METADATA_FILE
    if metadata.is_file():
        return read_metadata(folder)
    if folder.is_dir() and any(folder.iterdir()):
        raise DatasetError(
            f"{folder} is not empty and holds no llm-flow results ({METADATA_FILE} is missing); "
            "choose a new or empty folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the results folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise DatasetError(f"the results folder {folder} is not writable")
    return None


def read_metadata(folder: Path) -> dict:
    path = folder / METADATA_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}); it is not an llm-flow results file") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an llm-flow results file (expected format {FORMAT!r})")
    config = document.get("config")
    if isinstance(config, dict) and "targets" in config and "positions" not in config:
        config["positions"] = config.pop("targets")  # its name in folders written before the rename
    return document


def _check_same_settings(folder: Path, previous: dict, config: dict) -> None:
    changed = [key for key in RESUME_KEYS if previous.get(key) != config.get(key)]
    if changed:
        listing = ", ".join(f"{key} {previous.get(key)!r} (now {config.get(key)!r})" for key in changed)
        raise DatasetError(
            f"{folder} holds results made with {listing}; resume with the same settings or "
            "write to another folder"
        )


def _stored_tables(
    folder: Path, with_components: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """The folder's merged tables plus its checkpoints; for a prompt id stored more than once the
    latest row wins (finals first, then parts in order), with its component and expert rows (not
    read unless `with_components`: knowing what is done needs only the prompts). Folders written
    before the expert tables existed have none: they read as empty."""
    sources = [(folder / PROMPTS_FILE, folder / PROMPT_COMPONENTS_FILE, folder / PROMPT_EXPERTS_FILE)]
    for prompts_part in sorted((folder / PARTS_DIR).glob("part-*-prompts.parquet")):
        sources.append(tuple(
            prompts_part.with_name(prompts_part.name.replace("-prompts", suffix))
            for suffix in ("-prompts", "-components", "-experts")
        ))  # fmt: skip
    prompt_frames, component_frames, expert_frames = [], [], []
    for sequence, (prompts_path, components_path, experts_path) in enumerate(sources):
        if not prompts_path.is_file():
            continue
        prompt_frames.append(read_frame(prompts_path, PROMPTS_SCHEMA).assign(_seq=sequence))
        if with_components:
            component_frames.append(read_frame(components_path, PROMPT_COMPONENTS_SCHEMA).assign(_seq=sequence))
            if experts_path.is_file():
                expert_frames.append(read_frame(experts_path, PROMPT_EXPERTS_SCHEMA).assign(_seq=sequence))
    if not prompt_frames:
        return _empty(PROMPTS_SCHEMA), _empty(PROMPT_COMPONENTS_SCHEMA), _empty(PROMPT_EXPERTS_SCHEMA)
    prompts = pd.concat(prompt_frames, ignore_index=True).drop_duplicates("prompt_id", keep="last")
    if not with_components:
        return _sorted_prompts(prompts.drop(columns="_seq")), None, None
    latest = prompts[["prompt_id", "_seq"]]
    components = pd.concat(component_frames, ignore_index=True).merge(latest, on=["prompt_id", "_seq"])
    experts = pd.concat([_empty(PROMPT_EXPERTS_SCHEMA).assign(_seq=0), *expert_frames], ignore_index=True)
    experts = experts.merge(latest, on=["prompt_id", "_seq"]).drop(columns="_seq")
    experts = experts.assign(_prompt=experts["prompt_id"].map(_id_rank(experts["prompt_id"])))
    experts = experts.sort_values(["_prompt", "layer", "expert"], kind="stable").drop(columns="_prompt")
    return (
        _sorted_prompts(prompts.drop(columns="_seq")),
        _sorted_components(components.drop(columns="_seq")),
        experts.reset_index(drop=True),
    )


def _sorted_prompts(prompts: pd.DataFrame) -> pd.DataFrame:
    return prompts.sort_values("prompt_id", key=lambda ids: ids.map(_id_rank(ids)), kind="stable").reset_index(drop=True)


def _sorted_components(components: pd.DataFrame) -> pd.DataFrame:
    order = components.assign(
        _prompt=components["prompt_id"].map(_id_rank(components["prompt_id"])),
        _kind=components["kind"].map({kind: k for k, kind in enumerate(KINDS)}),
        _class=components["position_class"].map({name: k for k, name in enumerate(POSITION_CLASSES)}),
    )
    keys = ["_prompt", "_kind", "layer", "head", "_class"]
    return order.sort_values(keys, kind="stable").drop(columns=keys[:2] + ["_class"]).reset_index(drop=True)


def _id_rank(ids: pd.Series) -> dict[str, int]:
    """Numeric ids in numeric order, then the others alphabetically."""

    def key(value: str) -> tuple:
        return (0, int(value), value) if value.isdigit() else (1, 0, value)

    return {value: rank for rank, value in enumerate(sorted(set(ids), key=key))}


def _results_tables(results: list[PromptResult]) -> tuple[pa.Table, pa.Table, pa.Table]:
    prompts = [
        {
            "prompt_id": r.prompt_id, "text_hash": r.text_hash, "text": r.text, "status": r.status,
            "error": r.error, "n_tokens": len(r.tokens) if r.status == "ok" else None,
            "tokens": r.tokens if r.status == "ok" else None, "n_targets": r.n_targets,
        }  # fmt: skip
        for r in results
    ]
    components = [
        {
            "prompt_id": r.prompt_id, "component": row.component.id, "kind": row.component.kind,
            "layer": row.component.layer, "head": row.component.head, "position_class": row.position_class,
            "routes": row.routes, "contribution": row.contribution, "top_target": row.top_target,
        }  # fmt: skip
        for r in results
        for row in r.components
    ]
    experts = [
        {
            "prompt_id": r.prompt_id, "layer": e.layer, "expert": e.expert, "selected": e.selected,
            "share": e.share, "contribution": e.contribution,
        }  # fmt: skip
        for r in results
        for e in r.experts
    ]
    return (
        pa.Table.from_pylist(prompts, PROMPTS_SCHEMA),
        pa.Table.from_pylist(components, PROMPT_COMPONENTS_SCHEMA),
        pa.Table.from_pylist(experts, PROMPT_EXPERTS_SCHEMA),
    )


def read_frame(path: Path, schema: pa.Schema) -> pd.DataFrame:
    try:
        table = pq.read_table(path, schema=schema)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"{path} cannot be read as llm-flow results: {exc}") from None
    return table.to_pandas()


def _empty(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


def _table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    return table.replace_schema_metadata(None)


def _write(table: pa.Table, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def _atomic_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)

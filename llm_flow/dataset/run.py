"""`analyse_dataset`: prompts in, a results folder out, with either engine."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from llm_flow.dataset.analyse import Settings
from llm_flow.dataset.inprocess import run_inprocess
from llm_flow.dataset.prompts import PromptItem, read_prompts
from llm_flow.dataset.spec import ModelSpec
from llm_flow.dataset.store import ResultsWriter, Summary
from llm_flow.errors import ArgumentError
from llm_flow.models.base import TransparentLlm

ENGINES = ("inprocess", "ray")


def analyse_dataset(
    prompts: str | os.PathLike[str] | Iterable[str] | list[PromptItem],
    out: str | os.PathLike[str],
    model: str | ModelSpec | TransparentLlm,
    settings: Settings = Settings(),
    *,
    engine: str = "inprocess",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
) -> Summary:
    """Route statistics for every prompt not already done in `out`; returns what the folder holds.

    `model`: a name (as `load_model` takes it), a `ModelSpec` (device, dtype, config), or, for
    the in-process engine only, a loaded model. `workers` and `address` are for the Ray engine.
    """
    if engine not in ENGINES:
        raise ArgumentError(f"unknown engine {engine!r}: use 'inprocess' or 'ray'")
    if not isinstance(workers, int) or workers < 1:
        raise ArgumentError(f"workers must be a whole number >= 1 (got {workers!r})")
    if engine == "ray" and isinstance(model, TransparentLlm):
        raise ArgumentError("the Ray engine loads the model in each worker: pass its name or a ModelSpec, not a loaded model")
    items = _items(prompts)
    if isinstance(model, str):
        model = ModelSpec(model)
    if isinstance(model, ModelSpec):
        model = replace(model, max_prompt_tokens=_resolved_limit(model))
    writer = ResultsWriter(out, _config(model, settings))
    todo = [item for item in items if (item.prompt_id, item.text_hash) not in writer.done]
    if todo:
        if engine == "ray":
            from llm_flow.dataset.ray_engine import run_ray

            results = run_ray(model, settings, todo, writer.set_model, workers=workers, address=address)
        else:
            results = run_inprocess(model, settings, todo, writer.set_model, progress=progress)
        try:
            for result in results:
                writer.add(result)
        finally:
            writer.flush()  # an interrupted run keeps what it finished
    return writer.finish(skipped=len(items) - len(todo))


def _items(prompts) -> list[PromptItem]:
    if isinstance(prompts, list) and prompts and all(isinstance(p, PromptItem) for p in prompts):
        return prompts
    return read_prompts(prompts)


def _resolved_limit(spec: ModelSpec) -> int | None:
    """The prompt-length limit the loaded model will apply, recorded before it loads."""
    if spec.max_prompt_tokens is not None:
        return spec.max_prompt_tokens
    from llm_flow.config import default_config_path, load_config

    path = Path(spec.config_path) if spec.config_path is not None else default_config_path()
    return load_config(path).max_prompt_tokens if path.is_file() else None


def _config(model: ModelSpec | TransparentLlm, settings: Settings) -> dict:
    if isinstance(model, ModelSpec):
        placement = {"model": model.source, "device": model.device, "dtype": model.dtype, "max_prompt_tokens": model.max_prompt_tokens}
    else:
        info = model.info
        placement = {"model": info.name, "device": info.device, "dtype": info.dtype, "max_prompt_tokens": model.max_prompt_tokens}
    return placement | {"targets": settings.targets, "threshold": settings.threshold, "renormalize": settings.renormalize}

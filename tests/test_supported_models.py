"""No silent wrong answer: every architecture llm-flow cannot explain exactly is refused at load
with the architecture and the reason, and a decomposition that does not add up is caught by the
load-time probe (issue 20, item 4)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import llm_flow
from llm_flow.models.probe import first_mismatch
from tests.conftest import PROMPT
from tests.tiny_models import build_model

def test_bert_under_a_causal_lm_class_is_explained_as_the_encoder_it_is():
    """The silent wrong answer of the issue: BERT weights under BertLMHeadModel (not a decoder)
    were drawn with a causal mask. They are an encoder: every token reads every token."""
    from transformers import BertLMHeadModel

    model, tokenizer = build_model("bert")
    as_causal = BertLMHeadModel(model.config)
    as_causal.load_state_dict(model.state_dict())
    loaded = llm_flow.load_model(as_causal, tokenizer=tokenizer)
    assert loaded.info.bidirectional
    pattern = loaded.run(PROMPT).layer(0).pattern.dense()
    assert float(torch.triu(pattern, diagonal=1).sum()) > 1.0


def test_bert_configured_as_a_decoder_is_refused():
    from transformers import BertLMHeadModel

    model, tokenizer = build_model("bert")
    model.config.is_decoder = True
    with pytest.raises(llm_flow.UnsupportedModelError, match="configured as a decoder"):
        llm_flow.load_model(BertLMHeadModel(model.config), tokenizer=tokenizer)


def test_encoders_without_a_bridge_adapter_are_refused():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from tests.tiny_models import tiny_wordpiece_tokenizer

    tokenizer = tiny_wordpiece_tokenizer()
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=64, hidden_dim=96, n_layers=2, n_heads=4)
    with pytest.raises(llm_flow.UnsupportedModelError, match="DistilBertForMaskedLM is a bidirectional encoder"):
        llm_flow.load_model(DistilBertForMaskedLM(config), tokenizer=tokenizer)


def test_the_probe_passes_on_supported_models(tiny_models):
    run = tiny_models("gemma2").run(PROMPT)
    assert first_mismatch(run, 1e-4) is None


@pytest.mark.parametrize(
    "break_it, where",
    [
        # an adapter that forgets the value bias: the heads' parts miss b_V W_O
        (lambda act: {"values": act.values + 0.5}, "attention parts do not add up"),
        # a hook on the wrong module: the FFN output is not what was added to the residual
        (lambda act: {"mlp_out": act.mlp_out * 2}, "FFN output is not what it added"),
        (lambda act: {"neuron_acts": act.neuron_acts * 2}, "FFN neurons do not add up"),
        (lambda act: {"resid_pre": act.resid_pre + 1.0}, "does not start from layer 0"),
    ],
)
def test_the_probe_catches_a_decomposition_that_does_not_add_up(tiny_models, break_it, where):
    run = tiny_models("gpt2").run(PROMPT)
    layer = 1
    broken = dataclasses.replace(run.layers[layer], **break_it(run.layers[layer]))
    layers = run.layers[:layer] + (broken,) + run.layers[layer + 1 :]
    failure = first_mismatch(dataclasses.replace(run, layers=layers), 1e-3)
    assert failure is not None and where in failure


def test_the_probe_catches_logits_that_are_not_the_last_state():
    model, tokenizer = build_model("gpt2")
    loaded = llm_flow.load_model(model, tokenizer=tokenizer)
    run = loaded.run(PROMPT)
    with torch.no_grad():
        own = model(run.tokens[None]).logits[0]  # the plain transformers model's logits
    assert first_mismatch(run, 1e-3, own) is None
    wrong = own + torch.linspace(0, 1, own.shape[-1])  # a head or final norm the Run does not model
    assert "logits" in first_mismatch(run, 1e-3, wrong)

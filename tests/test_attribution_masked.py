"""Attribution of an encoder's prediction at its [MASK] (issue 20): every input token, before and
after the mask, is a source. Checked against captum run on the input embeddings of a freshly
loaded plain `transformers` BertForMaskedLM, occlusion against a hand loop of plain forward
passes, attention against `output_attentions` and ALTI rollout against a composition of
tests/reference.py's float64 contributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from transformers import AutoModelForMaskedLM, BertModel

import llm_flow
from llm_flow.attribution import METHODS, attribute, load_attribution
from llm_flow.errors import ArgumentError, PromptError
from tests.reference import reference_contributions, reference_layers
from tests.tiny_models import ENCODERS, save_tiny_models

PROMPT = "The capital of France is [MASK]. Paris is big."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_tiny_models(ENCODERS, tmp_path_factory.mktemp("masked"))


@pytest.fixture(scope="module")
def models(folders):
    return {family: llm_flow.load_model(str(folder)) for family, folder in folders.items()}


def plain(folder):
    """A fresh plain transformers masked LM (float32, eager attention), nothing shared."""
    return AutoModelForMaskedLM.from_pretrained(str(folder), attn_implementation="eager").eval().requires_grad_(False)


def prompt(model) -> str:
    return PROMPT.replace("[MASK]", model.tokenizer.mask_token)


def probability_at(reference, position: int, target: int):
    """f(embeddings) = p(target) at `position`, as the plain masked LM computes it (one text: token type 0)."""

    def forward(embeds):
        return reference(inputs_embeds=embeds).logits[:, position].softmax(-1)[:, target]

    return forward


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_integrated_gradients_equal_captum_on_the_plain_masked_lm(models, folders, family):
    model = models[family]
    result = attribute(model, prompt(model), "integrated_gradients", n_steps=16, baseline="zeros")
    ids, mask = result.token_ids[:-1], result.position
    assert model.decode_tokens([ids[mask]]) == [model.tokenizer.mask_token]
    assert result.n_steps == 1 and result.n_prompt == len(ids) and result.target_positions == [mask]
    reference = plain(folders[family])
    embeds = reference.get_input_embeddings()(torch.tensor([ids]))
    # the explained token is the plain model's own top prediction at the mask
    target = int(reference(torch.tensor([ids])).logits[0, mask].argmax())
    assert result.token_ids[-1] == target
    baseline = torch.zeros_like(embeds)
    baseline[:, 0] = embeds[:, 0]  # keep_first
    expected, delta = IntegratedGradients(probability_at(reference, mask, target)).attribute(
        embeds, baselines=baseline, n_steps=16, return_convergence_delta=True
    )
    row = result.scores[0]
    assert not np.isnan(row).any() and len(row) == len(ids)  # every token is a source, after the mask too
    np.testing.assert_allclose(row, expected[0].sum(-1).numpy(), rtol=1e-4, atol=1e-6)
    assert result.deltas[0] == pytest.approx(float(delta), abs=1e-5)
    p = float(reference(torch.tensor([ids])).logits[0, mask].softmax(-1)[target])
    assert result.step_scores["probability"][0] == pytest.approx(p, abs=1e-6)


def test_occlusion_equals_a_loop_of_plain_forward_passes(models, folders):
    model = models["bert"]
    result = attribute(model, prompt(model), "occlusion", continuation="paris", baseline="mask", keep_first=False)
    ids, mask = result.token_ids[:-1], result.position
    target = model.tokenizer.convert_tokens_to_ids("paris")
    assert result.token_ids[-1] == target and not result.generated
    reference = plain(folders["bert"])
    table = reference.get_input_embeddings()
    embeds = table(torch.tensor([ids]))
    f = probability_at(reference, mask, target)
    expected = []
    with torch.no_grad():
        full = f(embeds)
        for position in range(len(ids)):
            occluded = embeds.clone()
            occluded[0, position] = table.weight[model.tokenizer.mask_token_id]
            expected.append(float(full - f(occluded)))
    np.testing.assert_allclose(result.scores[0], expected, rtol=1e-4, atol=1e-6)
    assert result.scores[0][mask] == pytest.approx(0.0, abs=1e-6)  # the mask replaced by itself


def test_a_sentence_encoder_without_its_head_predicts_through_its_embeddings(models, folders):
    """all-MiniLM-L6-v2 has no masked-LM head: the explained logits are the mask's final state
    times the input embeddings, as its routes and logit lens use them."""
    model = models["bert_headless"]
    result = attribute(model, prompt(model), "input_x_gradient", function="logit")
    ids, mask, target = result.token_ids[:-1], result.position, result.token_ids[-1]
    encoder = BertModel.from_pretrained(str(folders["bert_headless"]), attn_implementation="eager").eval()
    embeds = encoder.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    logit = encoder(inputs_embeds=embeds).last_hidden_state[0, mask] @ encoder.get_input_embeddings().weight[target]
    (gradient,) = torch.autograd.grad(logit, embeds)
    np.testing.assert_allclose(result.scores[0], (gradient * embeds).sum(-1)[0].detach().numpy(), rtol=1e-4, atol=1e-6)
    assert result.step_scores["logit"][0] == pytest.approx(float(logit.detach()), abs=1e-4)
    assert target == int(model.run(prompt(model)).logits[mask].argmax())


def test_attention_and_alti_rollout_read_the_masks_row_over_every_token(models, folders):
    model = models["bert"]
    ids = model.encode(prompt(model))
    mask = ids.index(model.tokenizer.mask_token_id)
    attention = attribute(model, prompt(model), "attention", layer=1, heads="max")
    with torch.no_grad():
        pattern = plain(folders["bert"])(torch.tensor([ids]), output_attentions=True).attentions[1][0]  # [H, T, T]
    np.testing.assert_allclose(attention.scores[0], pattern[:, mask].max(0).values.numpy(), atol=1e-5)
    rollout = attribute(model, prompt(model), "alti_rollout")
    composed = torch.eye(len(ids), dtype=torch.float64)
    for layer in reference_layers(str(folders["bert"]), ids):
        c_heads, c_res, c_ffn, c_res2 = reference_contributions(layer, parallel=False)
        composed = torch.diag(c_ffn + c_res2) @ (c_heads.sum(-1) + torch.diag(c_res)) @ composed
    row = rollout.scores[0]
    np.testing.assert_allclose(row, composed[mask].numpy(), atol=2e-5)
    assert row[mask + 1 :].sum() > 0.01  # tokens after the mask take part
    assert row.sum() == pytest.approx(1.0, abs=1e-5)


def test_every_method_runs_and_the_result_reloads(models, tmp_path):
    model = models["roberta"]
    for name in METHODS:
        options = {"baseline": "mask"} if name == "occlusion" else {}
        result = attribute(model, prompt(model), name, **options)
        assert result.scores.shape == (1, result.n_prompt) and not np.isnan(result.scores).any()
    path = result.save(tmp_path / "masked.json")
    again = load_attribution(path)
    assert again.position == result.position and again.target_positions == [result.position]
    table = result.to_frame()
    assert len(table) == result.n_prompt and set(table["target_position"]) == {result.position}


@pytest.mark.parametrize("text, options, error, message", [
    ("The capital of France is Paris.", {}, PromptError, r"put \[MASK\] in the prompt"),
    (PROMPT, {"generate": 3}, ArgumentError, "predicts one token at its mask"),
    (PROMPT, {"continuation": "paris city"}, ArgumentError, "give a single token"),
    (PROMPT, {"chat_template": True}, ArgumentError, "has no chat template"),
])  # fmt: skip
def test_bad_requests_say_what_to_change(models, text, options, error, message):
    with pytest.raises(error, match=message):
        attribute(models["bert"], text, "saliency", **options)


def test_occlusion_with_an_end_of_sequence_baseline_names_the_ones_that_exist(models):
    with pytest.raises(ArgumentError, match="has no end-of-sequence token: use baseline 'zeros' or 'mean' or 'mask'"):
        attribute(models["bert"], PROMPT, "occlusion")


def test_a_sentence_pair_is_attributed_with_its_token_types(models, folders):
    model = models["bert"]
    result = attribute(model, "Where is Paris? [SEP] Paris is in [MASK].", "saliency", function="logit")
    ids, mask, target = result.token_ids[:-1], result.position, result.token_ids[-1]
    sep = ids.index(model.tokenizer.sep_token_id)
    types = torch.tensor([[0 if p <= sep else 1 for p in range(len(ids))]])
    assert types[0, mask] == 1
    reference = plain(folders["bert"])
    embeds = reference.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    logit = reference(inputs_embeds=embeds, token_type_ids=types).logits[0, mask, target]
    (gradient,) = torch.autograd.grad(logit, embeds)
    np.testing.assert_allclose(result.scores[0], gradient[0].norm(dim=-1).numpy(), rtol=1e-4, atol=1e-6)


def test_the_cli_attributes_the_mask(folders, tiny_config, tmp_path, capsys):
    from llm_flow.attribution import load_attribution
    from llm_flow.cli import main

    out = tmp_path / "masked.json"
    args = ["--config", str(tiny_config), "attribute", "--model", str(folders["bert"]), "--prompt", PROMPT,
            "--method", "occlusion", "--option", "baseline=mask", "--continuation", "paris", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = load_attribution(out)
    assert result.targets == ["paris"] and result.position == 6
    assert "every one a source; explained at [MASK] (position 6), the given token: [paris]" in printed

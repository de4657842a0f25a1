"""Attribution on encoder–decoders, as Inseq does it: each target token attributed to the source
tokens and the target prefix, with step scores. References are computed on the plain
`transformers` model run from token ids, the embeddings taken where the model looks them up
(forward hooks on its embedding modules), with autograd: independent of how llm-flow feeds
embeddings in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from llm_flow.attribution import attribute
from llm_flow.attribution.result import load_attribution
from llm_flow.errors import ArgumentError, UnsupportedModelError

from tests.test_seq2seq import FAMILIES, SOURCE, TARGET, folders, loaded  # noqa: F401  (fixtures)


def plain(folder):
    return transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval().double()


class Looked:
    """Forward hooks on the encoder's and the decoder's embedding lookups: their outputs, kept
    for gradients, or one row replaced (occlusion)."""

    def __init__(self, model, replace: dict[str, tuple[int, torch.Tensor]] | None = None) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for side, stack in (("encoder", model.get_encoder()), ("decoder", model.get_decoder())):
            self.handles.append(stack.register_forward_pre_hook(self._enter(side)))
        self.side = None
        self.replace = replace or {}
        shared = {id(model.get_encoder().embed_tokens), id(model.get_decoder().embed_tokens)}
        assert len(shared) <= 2
        for module in {model.get_encoder().embed_tokens, model.get_decoder().embed_tokens}:
            self.handles.append(module.register_forward_hook(self._looked))

    def _enter(self, side):
        def hook(module, args):
            self.side = side

        return hook

    def _looked(self, module, args, output):
        if self.side in self.replace:
            position, vector = self.replace[self.side]
            output = output.clone()
            output[0, position] = vector
        if output.requires_grad:
            output.retain_grad()
        self.outputs[self.side] = output
        return output

    def close(self):
        for handle in self.handles:
            handle.remove()


def step_function(model, run, step: int) -> torch.Tensor:
    """p(target token `step`) from the source and the decoder's tokens before it, by token ids."""
    decoder = run.decoder_tokens[: step + 1][None]
    logits = model(input_ids=run.source_tokens[None], decoder_input_ids=decoder, use_cache=False).logits
    return logits[0, -1].softmax(-1)[run.target_ids[step]]


@pytest.mark.parametrize("family", FAMILIES)
def test_input_x_gradient_equals_autograd_on_plain_transformers(family, folders, loaded):
    result = attribute(loaded[family], SOURCE, "input_x_gradient", continuation=TARGET)
    run = loaded[family].run_pair(SOURCE, TARGET)
    n_source = run.n_source
    assert result.n_source == n_source and result.n_prompt == n_source + 1
    assert result.targets == run.decoder_str_tokens[1:]
    model = plain(folders[family])
    model.get_input_embeddings().weight.requires_grad_(True)  # the lookups' outputs then carry gradients
    for step in range(result.n_steps):
        hooks = Looked(model)
        value = step_function(model, run, step)
        value.backward()
        hooks.close()
        expected = torch.cat([(hooks.outputs[side][0] * hooks.outputs[side].grad[0]).sum(-1)
                              for side in ("encoder", "decoder")]).detach().numpy()  # fmt: skip
        row = result.scores[step]
        np.testing.assert_allclose(row[: n_source + 1 + step], expected, rtol=2e-3, atol=1e-6)
        assert np.isnan(row[n_source + 1 + step :]).all()  # the target and what follows are not seen


@pytest.mark.parametrize("family", ["marian", "bart"])
def test_occlusion_is_the_drop_when_a_token_is_replaced(family, folders, loaded):
    model_ = loaded[family]
    result = attribute(model_, SOURCE, "occlusion", continuation=TARGET, baseline="zeros")
    run = model_.run_pair(SOURCE, TARGET)
    model = plain(folders[family])
    n_source = run.n_source
    step = result.n_steps - 1
    with torch.no_grad():
        clean = float(step_function(model, run, step))
        for column in (0, 3, n_source - 1, n_source + 2):
            side, position = ("encoder", column) if column < n_source else ("decoder", column - n_source)
            zero = torch.zeros(model.config.d_model, dtype=torch.float64)
            hooks = Looked(model, {side: (position, zero)})
            occluded = float(step_function(model, run, step))
            hooks.close()
            assert result.scores[step, column] == pytest.approx(clean - occluded, rel=1e-3, abs=1e-6)
    assert (result.scores[:, n_source] == 0).all()  # the decoder start is kept, as a decoder's BOS is


@pytest.mark.parametrize("family", ["marian", "bart"])
def test_integrated_gradients_add_up_and_saliency_is_a_norm(family, loaded):
    """(T5 from a zero baseline does not converge: its first RMSNorm is blind to the input's scale,
    so the output jumps at the path's very start. The delta says so; the mean baseline converges.)"""
    model = loaded[family]
    ig = attribute(model, SOURCE, "integrated_gradients", continuation=TARGET, function="logit", n_steps=64)
    totals = np.array([np.nansum(row) for row in ig.scores])  # f(x) - f(baseline) + delta, per step
    # completeness: the path integral converged (captum's delta is small against what it splits)
    assert np.isfinite(totals).all() and (np.abs(np.array(ig.deltas)) < 0.02 * np.abs(totals)).all()
    saliency = attribute(model, SOURCE, "saliency", continuation=TARGET)
    assert np.nanmin(saliency.scores) >= 0 and saliency.scale == "norm"


def test_step_scores_are_the_probabilities_of_each_written_token(folders, loaded):
    model_ = loaded["marian"]
    result = attribute(model_, SOURCE, "attention", generate=4)
    run = model_.run_pair(SOURCE, max_new_tokens=4)
    assert result.generated and result.targets == run.decoder_str_tokens[1:]
    model = plain(folders["marian"])
    with torch.no_grad():
        expected = [float(step_function(model, run, step)) for step in range(len(run.target_ids))]
    np.testing.assert_allclose(result.step_scores["probability"], expected, rtol=1e-4)
    # attention: each row is the last decoder layer's cross-attention, mean over heads, over the source
    with torch.no_grad():
        out = model(input_ids=run.source_tokens[None], decoder_input_ids=run.decoder_tokens[None], output_attentions=True)
    cross = out.cross_attentions[-1][0].mean(0).numpy()  # [T, S]
    n_source = run.n_source
    np.testing.assert_allclose(result.scores[:, :n_source], cross[: result.n_steps], atol=1e-6)
    assert np.isnan(result.scores[:, n_source:]).all() and result.scale == "share"


def test_words_json_and_refusals(loaded, tmp_path):
    model = loaded["bart"]
    result = attribute(model, SOURCE, "saliency", continuation=TARGET)
    words = result.by_words()
    starts = [start for start, _ in words.spans]
    assert result.n_source in starts  # no word crosses from the source into the target
    path = result.save(tmp_path / "a.json")
    again = load_attribution(path)
    assert again.n_source == result.n_source and np.allclose(again.scores, result.scores, equal_nan=True)
    with pytest.raises(ArgumentError, match="unknown attribution method"):
        attribute(model, SOURCE, "alti_rollout_typo", continuation=TARGET)
    with pytest.raises(UnsupportedModelError, match="not available for encoder–decoders; use one of"):
        attribute(model, SOURCE, "gradient_shap", continuation=TARGET)
    with pytest.raises(ArgumentError, match="not both"):
        attribute(model, SOURCE, "saliency", continuation=TARGET, generate=2)
    with pytest.raises(ArgumentError, match="layer 5 is out of range"):
        attribute(model, SOURCE, "attention", continuation=TARGET, layer=5)


def test_the_cli_attributes_a_translation(folders, tmp_path, capsys):
    from llm_flow.cli import main

    out = tmp_path / "attribution.csv"
    code = main(["attribute", "--model", str(folders["marian"]), "--prompt", SOURCE, "--continuation", TARGET,
                 "--method", "input_x_gradient", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    import pandas as pd

    table = pd.read_csv(out)
    assert set(table["step"]) == set(range(len(loaded_targets(folders))))
    assert "probability" in table.columns


def loaded_targets(folders) -> list[int]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["marian"])
    return tokenizer(text_target=TARGET).input_ids

"""The logit lens on an encoder–decoder's decoder nodes, against plain `transformers`: forward
hooks on the model's own modules record the states a route's decoder nodes stand for (the first
layer's input X, after self-attention A, after cross-attention C, after the layer I), and the
tail is written out per family from the weights (Marian, BART: the output head plus
``final_logits_bias``; mBART: the decoder's final LayerNorm first; T5: the decoder's final
RMSNorm, d_model^-1/2 with tied embeddings, the output head). Tiny models at unit gain, so that
every layer's lens differs visibly."""

from __future__ import annotations

import pytest
import torch
import transformers

import llm_flow
from llm_flow.errors import ArgumentError
from llm_flow.views.seq2seq_lens import lens_logits, pair_logit_lens
from tests.test_seq2seq_routes import save_strong_model

FAMILIES = ["marian", "t5", "bart", "mbart"]
SOURCE = "The capital of France is Paris."
TARGET = "Paris is the capital"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq_lens")
    return {family: save_strong_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def runs(folders):
    return {family: llm_flow.load_model(folder).run_pair(SOURCE, TARGET) for family, folder in folders.items()}


def reference_lens(folder: str, source_ids: list[int], decoder_ids: list[int]) -> tuple[dict, torch.Tensor]:
    """{(kind, layer): [T, vocab] logits} from hooks on plain transformers and the tail written
    out by hand, and the model's own logits."""
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
    decoder = model.get_decoder()
    t5 = hasattr(decoder, "block")
    states: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def keep(key, pre=False):
        def hook(module, args, kwargs, output=None):
            value = (args[0] if args else kwargs["hidden_states"]) if pre else output
            states[key] = (value[0] if isinstance(value, tuple) else value)[0].detach()
        return hook

    pre_ln = model.config.model_type == "mbart"  # the states are the inputs of the next LayerNorms
    layers = decoder.block if t5 else decoder.layers
    handles.append(layers[0].register_forward_pre_hook(keep(("X", -1), pre=True), with_kwargs=True))
    for layer, block in enumerate(layers):
        if t5:
            after = {"A": block.layer[0], "C": block.layer[1]}
        elif pre_ln:
            after = {"A": block.encoder_attn_layer_norm, "C": block.final_layer_norm}
        else:
            after = {"A": block.self_attn_layer_norm, "C": block.encoder_attn_layer_norm}
        for kind, module in after.items():
            handles.append(module.register_forward_pre_hook(keep((kind, layer), pre=True), with_kwargs=True) if pre_ln
                           else module.register_forward_hook(keep((kind, layer)), with_kwargs=True))  # fmt: skip
        handles.append(block.register_forward_hook(keep(("I", layer)), with_kwargs=True))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([source_ids]), decoder_input_ids=torch.tensor([decoder_ids]), use_cache=False)
        for handle in handles:
            handle.remove()
        if t5:
            scale = model.config.d_model**-0.5 if model.config.tie_word_embeddings else 1.0
            tail = lambda h: model.lm_head(decoder.final_layer_norm(h) * scale)  # noqa: E731
        else:
            norm = decoder.layer_norm if pre_ln else torch.nn.Identity()  # Marian and BART have no final norm
            tail = lambda h: model.lm_head(norm(h)) + model.final_logits_bias[0]  # noqa: E731
        return {key: tail(state) for key, state in states.items()}, out.logits[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_decoder_node_reads_as_the_model_tail_reads_its_state(family, folders, runs):
    run = runs[family]
    expected, logits = reference_lens(folders[family], run.source_tokens.tolist(), run.decoder_tokens.tolist())
    n_layers = run.model.info.n_layers
    assert len(expected) == 1 + 3 * n_layers
    for (kind, layer), reference in expected.items():
        torch.testing.assert_close(lens_logits(run, kind, layer), reference.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(expected[("I", n_layers - 1)], logits, atol=1e-4, rtol=1e-4)  # the tail is the model's
    gaps = [(expected[a] - expected[b]).abs().max().item() for a, b in ((("I", 0), ("I", n_layers - 1)), (("A", 0), ("C", 0)))]
    assert min(gaps) > 0.1  # not vacuous: the states read differently, far beyond the tolerance


@pytest.mark.parametrize("family", FAMILIES)
def test_the_top_tokens_and_probabilities_are_the_softmax_of_the_lens(family, folders, runs):
    run = runs[family]
    expected, _ = reference_lens(folders[family], run.source_tokens.tolist(), run.decoder_tokens.tolist())
    probabilities = torch.softmax(expected[("C", 0)][3].double(), -1)
    top = pair_logit_lens(run, "C", 0, 3, k=5)
    assert [t.token_id for t in top] == torch.topk(probabilities, 5).indices.tolist()
    assert [t.probability for t in top] == pytest.approx(torch.topk(probabilities, 5).values.tolist(), abs=1e-5)
    assert [t.token for t in top] == run.model.decode_tokens([t.token_id for t in top])


def test_nodes_the_decoder_does_not_have_are_refused(runs):
    run = runs["marian"]
    with pytest.raises(ArgumentError, match="no node C9"):
        pair_logit_lens(run, "C", 9, 0)
    with pytest.raises(ArgumentError, match="out of range"):
        pair_logit_lens(run, "I", 0, run.n_decoder)

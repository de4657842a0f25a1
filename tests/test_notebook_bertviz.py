"""BertViz's calls (`llm_flow.notebook`) on the attentions of plain `transformers` models: the
head view draws the numbers llm-flow's own head view draws from a Run of the same model, and the
lines it draws are exactly the attention weights transformers returned (above the 1 % of the
strongest that any head view draws). Tiny random models: the point is the plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from llm_flow.errors import ArgumentError
from llm_flow.figures.attention import _FAINTEST, head_view_figure, model_view_figure
from llm_flow.notebook import HtmlPage, head_view, model_view, neuron_view
from llm_flow.views.attention import head_view as own_head_view
from llm_flow.views.attention import model_view as own_model_view
from tests.conftest import PROMPT

LAYER = 1


def plain_attentions(folder, run) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """The model in `folder` as plain transformers loads it, run on the Run's token ids."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        outputs = model(run.tokens[None], output_attentions=True)
    return outputs.attentions, tokenizer.convert_ids_to_tokens(run.tokens.tolist())


def shown(figure) -> list:
    """The traces of the layer on screen (the others wait behind the layer menu)."""
    return [trace for trace in figure.data if trace.visible is not False]


def segments(traces, head: str) -> set[tuple[int, int]]:
    """(query, source) of every line drawn for `head` (y is minus the token position)."""
    out = set()
    for trace in traces:
        if trace.mode == "lines" and trace.showlegend is False and trace.name == head:
            ys = np.asarray(trace.y, dtype=float)
            out |= {(int(-ys[k]), int(-ys[k + 1])) for k in range(0, len(ys), 3)}
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_head_view_of_transformers_attentions_draws_llm_flows_own_head_view(family, tiny_folders, tiny_models):
    run = tiny_models(family).run(PROMPT)
    attentions, tokens = plain_attentions(tiny_folders[family], run)
    page = head_view(attentions, tokens, layer=LAYER, html_action="return")
    own = head_view_figure(own_head_view(run, LAYER))
    drawn = shown(page.figure)
    assert len(drawn) == len(own.data)
    for mine, theirs in zip(drawn, own.data):
        assert (mine.name, mine.mode, mine.opacity) == (theirs.name, theirs.mode, theirs.opacity)
        np.testing.assert_allclose(np.asarray(mine.y, dtype=float), np.asarray(theirs.y, dtype=float), atol=0)
        if mine.mode == "markers+text":  # token labels and the hover numbers (three strongest links)
            assert list(mine.text) == list(theirs.text)
            assert [h.split("</b>")[1] for h in mine.hovertext] == [h.split("</b>")[1] for h in theirs.hovertext]
    weights = attentions[LAYER][0].numpy()  # [H, T, T], as transformers computed them
    for head in range(weights.shape[0]):
        expected = set(zip(*np.nonzero(weights[head] >= _FAINTEST)))
        assert segments(drawn, f"head {head}") == expected
    assert page.figure.layout.title.text == own.layout.title.text == f"Layer {LAYER}: attention weight"


def test_model_view_of_transformers_attentions_draws_llm_flows_own_model_view(tiny_folders, tiny_models):
    run = tiny_models("llama").run(PROMPT)
    attentions, tokens = plain_attentions(tiny_folders["llama"], run)
    page = model_view(attentions, tokens, include_layers=[0, 2], include_heads=[1, 3], html_action="return")
    own = model_view_figure(own_model_view(run, layers=[0, 2], heads=[1, 3]))
    stacked = torch.stack([attentions[layer][0, [1, 3]] for layer in (0, 2)]).numpy()  # [2, 2, T, T]
    n = stacked.shape[-1]
    theirs, mine = np.asarray(page.figure.data[0].z), np.asarray(own.data[0].z)  # rows: (layer, query)
    # Layer 0 reads the same embeddings in both passes: the same weights to the bit. llm-flow's
    # pass attends with SDPA, the reference with eager attention, so later layers read inputs
    # that differ by float32 rounding (measured: at most 4.6e-6 on the four tiny families).
    np.testing.assert_array_equal(theirs[:n], mine[:n])
    np.testing.assert_allclose(theirs[n:], mine[n:], atol=1e-5)
    np.testing.assert_allclose(page.figure.data[0].z, stacked.transpose(0, 2, 1, 3).reshape(2 * n, 2 * n), atol=1e-6)


def test_head_view_of_a_bert_encoder_draws_every_direction():
    """An encoder's attention reads later tokens too: the head view draws those lines as given.
    (llm-flow cannot run BERT itself on this branch, so there is no Run to compare with.)"""
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids = torch.tensor([[2, 11, 12, 13, 3, 14, 15, 3]])
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    tokens = ["[CLS]", "the", "cat", "sat", "[SEP]", "it", "slept", "[SEP]"]
    page = head_view(attentions, tokens, sentence_b_start=5, html_action="return")
    drawn = shown(page.figure)
    for head in range(4):
        expected = set(zip(*np.nonzero(attentions[0][0, head].numpy() >= _FAINTEST)))
        assert segments(drawn, f"head {head}") == expected
        assert any(source > query for query, source in expected)  # some lines go forward
    assert any(annotation.text == "sentence B" for annotation in page.figure.layout.annotations)


def test_layer_menu_and_initially_selected_heads(tiny_folders, tiny_models):
    run = tiny_models("gpt2").run(PROMPT)
    attentions, tokens = plain_attentions(tiny_folders["gpt2"], run)
    page = head_view(attentions, tokens, layer=2, heads=[0, 3], include_layers=[1, 2], html_action="return")
    menu = page.figure.layout.updatemenus[0]
    assert [button.label for button in menu.buttons] == ["Layer 1", "Layer 2"] and menu.active == 1
    lines = [t for t in page.figure.data if t.mode == "lines"]
    on = {t.name for t in lines if t.visible is True}
    waiting = {t.name for t in lines if t.visible == "legendonly"}
    assert on == {"head 0", "head 3"} and waiting == {"head 1", "head 2"}
    # choosing Layer 1 shows its traces (same head choice) and hides layer 2's
    visible = menu.buttons[0].args[0]["visible"]
    groups = [t.legendgroup for t in page.figure.data]
    assert {g.split()[0] for g, v in zip(groups, visible) if v is not False and g} == {"L1"}
    assert "Layer 1" in menu.buttons[0].args[1]["title.text"]


def test_a_run_gives_the_weighting_switch(tiny_models):
    run = tiny_models("llama").run(PROMPT)
    for weighting in ("attention", "norm", "alti"):
        page = model_view(run, weighting=weighting, html_action="return")
        np.testing.assert_allclose(page.figure.data[0].z, model_view_figure(own_model_view(run, weighting=weighting)).data[0].z)
    with pytest.raises(ArgumentError, match="needs the model's values"):
        head_view((torch.rand(1, 2, 3, 3),), ["a", "b", "c"], weighting="alti")


def test_neuron_view_on_a_loaded_model(tiny_models):
    page = neuron_view(tiny_models("gpt2"), PROMPT, layer=1, head=2, html_action="return")
    assert isinstance(page, HtmlPage) and "Layer 1, head 2" in page.figure.layout.title.text
    with pytest.raises(ArgumentError, match="loaded by llm-flow"):
        neuron_view(object(), PROMPT)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a, t: head_view(a, t[:-1]), "tokens were given"),
        (lambda a, t: head_view(a, None), "tokens is required"),
        (lambda a, t: head_view(tuple(torch.cat([x, x]) for x in a), t), "batch of 2"),
        (lambda a, t: head_view(a, t, include_layers=[7]), "include_layers"),
        (lambda a, t: head_view(a, t, layer=0, include_layers=[1]), "layer 0 is not among"),
        (lambda a, t: head_view(a, t, html_action="show"), "html_action"),
        (lambda a, t: head_view(a, t, encoder_attention=a), "not both"),
        (lambda a, t: head_view(cross_attention=a, decoder_tokens=t), "encoder_tokens is required"),
        (lambda a, t: head_view(cross_attention=a, encoder_tokens=t[:-1], decoder_tokens=t), "reads 4 source tokens"),
        (lambda a, t: head_view(decoder_attention=tuple(x[..., :-1] for x in a), decoder_tokens=t), "not \\[1, heads"),
        (lambda a, t: head_view(a[0], t), "tuple of per-layer"),
        (lambda a, t: head_view((None,) * len(a), t), "eager"),
        (lambda a, t: head_view(encoder_attention=(), encoder_tokens=t), "is empty"),
    ],
)
def test_bad_arguments_say_what_to_change(call, message):
    attentions = tuple(torch.softmax(torch.rand(1, 2, 4, 4), -1) for _ in range(3))
    with pytest.raises(ArgumentError, match=message):
        call(attentions, ["a", "b", "c", "d"])


def test_encoder_and_decoder_attention_each_get_a_figure():
    encoder = tuple(torch.softmax(torch.rand(1, 2, 4, 4), -1) for _ in range(2))
    decoder = tuple(torch.softmax(torch.rand(1, 2, 3, 3), -1) for _ in range(2))
    page = model_view(encoder_attention=encoder, decoder_attention=decoder, encoder_tokens=list("abcd"),
                      decoder_tokens=list("xyz"), html_action="return")  # fmt: skip
    assert [f.layout.title.text.split(":")[0] for f in page.figures] == ["Encoder", "Decoder"]
    assert page.data.count("<script") >= 2 and page.data.count("Plotly.newPlot") == 2


# --- encoder–decoders: BertViz's encoder_attention / decoder_attention / cross_attention -------

SOURCE_IDS = [5, 17, 9, 23, 11, 1]  # the tiny tokenizer's ids; 1 ends the source
TARGET_IDS = [2, 30, 8, 14, 27]  # decoder start, then a target prefix


def seq2seq_attentions(family: str):
    """A tiny random encoder–decoder as plain transformers runs it, with its three attentions."""
    from tests.tiny_models import build_model

    model, tokenizer = build_model(family)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(input_ids=torch.tensor([SOURCE_IDS]), decoder_input_ids=torch.tensor([TARGET_IDS]),
                        output_attentions=True)  # fmt: skip
    return outputs, tokenizer.convert_ids_to_tokens(SOURCE_IDS), tokenizer.convert_ids_to_tokens(TARGET_IDS)


def three(outputs, source, target, **options):
    return dict(encoder_attention=outputs.encoder_attentions, decoder_attention=outputs.decoder_attentions,
                cross_attention=outputs.cross_attentions, encoder_tokens=source, decoder_tokens=target,
                html_action="return", **options)  # fmt: skip


@pytest.mark.parametrize("family", ["marian", "t5", "bart"])
def test_model_view_of_an_encoder_decoder_draws_its_three_attentions(family):
    outputs, source, target = seq2seq_attentions(family)
    page = model_view(**three(outputs, source, target))
    assert page.tabs == ["Encoder", "Decoder", "Cross"]
    for figure, weights in zip(page.figures, (outputs.encoder_attentions, outputs.decoder_attentions,
                                              outputs.cross_attentions)):  # fmt: skip
        stacked = torch.stack([layer[0] for layer in weights]).numpy()  # [L, H, queries, sources]
        n_layers, n_heads, rows, cols = stacked.shape
        expected = stacked.transpose(0, 2, 1, 3).reshape(n_layers * rows, n_heads * cols)
        np.testing.assert_allclose(figure.data[0].z, expected, atol=1e-7)
    cross = page.figures[2]
    assert cross.data[0].z.shape == (2 * len(TARGET_IDS), 4 * len(SOURCE_IDS))  # rows: decoder, columns: encoder
    assert cross.data[0].y[0].startswith("layer 0 · query 0") and f"source 0 {source[0]}" in cross.data[0].x[0]
    assert f"source {len(SOURCE_IDS) - 1}" in cross.data[0].x[-1]


@pytest.mark.parametrize("family", ["marian", "t5", "bart"])
def test_head_view_of_cross_attention_joins_decoder_tokens_to_encoder_tokens(family):
    outputs, source, target = seq2seq_attentions(family)
    page = head_view(**three(outputs, source, target, layer=1))
    encoder, decoder, cross = page.figures
    for figure, weights in ((encoder, outputs.encoder_attentions), (decoder, outputs.decoder_attentions),
                            (cross, outputs.cross_attentions)):  # fmt: skip
        drawn = shown(figure)
        for head in range(4):
            expected = set(zip(*np.nonzero(weights[1][0, head].numpy() >= _FAINTEST)))
            assert segments(drawn, f"head {head}") == expected
    tokens = {trace.name: list(trace.text) for trace in shown(cross) if trace.mode == "markers+text"}
    assert len(tokens["query tokens"]) == len(TARGET_IDS) and len(tokens["source tokens"]) == len(SOURCE_IDS)
    assert cross.layout.title.text.startswith("Cross: Layer 1")
    decoder_lines = segments(shown(decoder), "head 0")
    assert all(source <= query for query, source in decoder_lines)  # the decoder's self-attention is causal


def test_three_tabs_in_one_standalone_page():
    outputs, source, target = seq2seq_attentions("marian")
    page = head_view(**three(outputs, source, target))
    document = page.data
    assert document.startswith("<!DOCTYPE html>") and document.count("Plotly.newPlot") == 3
    assert document.count("<button") == 3 and ">Cross</button>" in document
    assert "<script src=" not in document and document.count("class='llm-flow-tab'") == 3

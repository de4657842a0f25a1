"""The app's pages for encoder–decoders, driven headlessly with AppTest on a tiny Marian and a
tiny T5 (and BART for the tabs): the three attention tabs show transformers' own ``output_attentions``, the Attribution
page the scores of the library's attribution computed on its own, the Playground writes what
plain ``generate`` writes (the Explorer: tests/test_app_seq2seq_explorer.py); bad sources and targets are refused with one message and what was
typed stays; pages that do not apply say why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from streamlit.testing.v1 import AppTest

import llm_flow
from tests.app_helpers import active_run, goto, start, state, widget_key
from tests.test_app_attention import array, shown_figure
from tests.tiny_models import save_tiny_model

FAMILIES = ["marian", "t5"]
ALL = [*FAMILIES, "bart"]  # the attention tabs on BART too
SOURCE = "The capital of France is Paris."
TARGET = "Paris is the capital"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_seq2seq")
    return {family: save_tiny_model(family, root / family) for family in ALL}


@pytest.fixture(scope="module")
def config(folders, tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_seq2seq_config")
    (folder / "prompts.json").write_text(json.dumps([SOURCE, "One, two, three."]))
    path = folder / "local.json"
    path.write_text(json.dumps({
        "default_model": "tiny-marian",
        "models": {f"tiny-{family}": {"source": str(path)} for family, path in folders.items()},
        "prompts_file": "prompts.json", "limits": {"max_prompt_tokens": 40},
    }))  # fmt: skip
    return path


def plain(folder):
    return transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()


def plain_pair(folder, source: str, target: str | list[int]):
    """Token ids as the folder's tokenizer gives them, and plain transformers' outputs on them."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = plain(folder)
    target_ids = tokenizer(text_target=target).input_ids if isinstance(target, str) else target
    decoder = [model.config.decoder_start_token_id, *target_ids]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokenizer(source).input_ids]), decoder_input_ids=torch.tensor([decoder]),
                    output_attentions=True)  # fmt: skip
    return tokenizer(source).input_ids, decoder, out


def opened(config, monkeypatch, family: str, page: str, target: str = TARGET) -> AppTest:
    app = start(config, monkeypatch, {"model": f"tiny-{family}", "target": target})
    assert not app.error, [e.value for e in app.error]
    return goto(app, page)


def check(app: AppTest) -> AppTest:
    assert not app.exception, [e.message for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    return app


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label.startswith(label))


# --- Attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ALL)
def test_the_three_tabs_show_transformers_own_attention_weights(family, config, folders, monkeypatch):
    app = opened(config, monkeypatch, family, "attention")
    source_ids, decoder, out = plain_pair(folders[family], SOURCE, TARGET)
    S, T = len(source_ids), len(decoder)
    assert active_run(app).source_tokens.tolist() == source_ids and active_run(app).decoder_tokens.tolist() == decoder
    app.radio(key=widget_key("attention.view")).set_value("model").run()
    expected = {"encoder": (out.encoder_attentions, S, S), "decoder": (out.decoder_attentions, T, T),
                "cross": (out.cross_attentions, T, S)}  # fmt: skip
    for stack, (weights, rows, columns) in expected.items():
        check(app.segmented_control(key=widget_key("attention.stack")).set_value(stack).run())
        figure = shown_figure(app)
        z = array(figure["data"][0]["z"])
        n_layers, n_heads = len(weights), weights[0].shape[1]
        assert z.shape == (n_layers * rows, n_heads * columns)  # cross: rows the decoder's tokens, columns the source's
        for layer in range(n_layers):
            for head in range(n_heads):
                tile = z[layer * rows : (layer + 1) * rows, head * columns : (head + 1) * columns]
                np.testing.assert_allclose(tile, weights[layer][0, head].numpy(), atol=1e-6)
        assert figure["layout"]["title"]["text"].startswith({"encoder": "Encoder self", "decoder": "Decoder self",
                                                             "cross": "Cross"}[stack])  # fmt: skip
        spread = max(np.abs(w[0] - w[0].mean(-1, keepdim=True)).max().item() for w in weights)
        assert spread > 1e-3  # not vacuous: weights differ from a uniform row by far more than the tolerance


def test_the_tab_and_view_survive_a_page_switch(config, monkeypatch):
    app = opened(config, monkeypatch, "marian", "attention")
    check(app.segmented_control(key=widget_key("attention.stack")).set_value("cross").run())
    check(app.radio(key=widget_key("attention.view")).set_value("model").run())
    goto(app, "explorer")
    goto(app, "attention")
    check(app)
    assert (state(app).attention.stack, state(app).attention.view) == ("cross", "model")
    assert shown_figure(app)["layout"]["title"]["text"].startswith("Cross-attention: All layers")
    assert app.segmented_control(key=widget_key("attention.stack")).value == "cross"


# --- Attribution -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ALL)
def test_cross_attention_attribution_is_transformers_cross_attention_of_each_step(family, config, folders, monkeypatch):
    app = opened(config, monkeypatch, family, "attribution")
    check(app.segmented_control(key=widget_key("attribution.method")).set_value("attention").run())
    _, decoder, out = plain_pair(folders[family], SOURCE, TARGET)
    figure = shown_figure(app)
    z = array(figure["data"][0]["z"]).reshape(len(decoder) - 1, -1)
    expected = out.cross_attentions[-1][0].mean(0).numpy()  # [T, S], last decoder layer, mean of heads
    S = expected.shape[1]
    np.testing.assert_allclose(z[:, :S], expected[:-1], atol=1e-6)  # step t: decoder position t predicts target t
    assert np.isnan(z[:, S:]).all()  # the target prefix is not scored by cross-attention
    probabilities = torch.softmax(out.logits[0].double(), -1)
    steps = next(df.value for df in app.dataframe if "probability" in df.value.columns)
    np.testing.assert_allclose(steps["probability"], [probabilities[t, decoder[t + 1]].item() for t in range(len(decoder) - 1)],
                               rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["saliency", "alti_rollout", "occlusion"])
def test_every_target_token_is_attributed_as_the_library_attributes_it(family, method, config, folders, monkeypatch):
    app = opened(config, monkeypatch, family, "attribution")
    check(app.segmented_control(key=widget_key("attribution.method")).set_value(method).run())
    reference = llm_flow.attribution.attribute(llm_flow.load_model(str(folders[family])), SOURCE, method, continuation=TARGET)
    z = array(shown_figure(app)["data"][0]["z"]).reshape(reference.scores.shape)
    largest = np.nanmax(np.abs(reference.scores))
    assert largest > 0  # not vacuous: the tolerance below is a thousandth of the largest score
    np.testing.assert_allclose(z, reference.scores, atol=1e-3 * largest, equal_nan=True)
    assert reference.n_source == len(active_run(app).source_tokens)  # each row: source, then the target prefix
    assert np.isfinite(z[-1]).sum() == z.shape[1]  # the last target token sees every source and prefix token


def test_a_decoder_only_method_is_put_back_with_a_notice(config, monkeypatch):
    app = start(config, monkeypatch, {"model": "tiny-marian", "target": TARGET, "attr_method": "gradient_shap"})
    goto(app, "attribution")
    assert any("not available for encoder–decoders" in w.value for w in app.warning)
    assert state(app).attribution.method == "integrated_gradients" and not app.exception


# --- Playground --------------------------------------------------------------------------------


@pytest.mark.parametrize("family,temperature", [("marian", 0.0), ("marian", 1.0), ("t5", 1.0)])
def test_the_playground_writes_the_target_plain_generate_writes(family, temperature, config, folders, monkeypatch):
    app = opened(config, monkeypatch, family, "playground")
    app.slider(key=widget_key("playground.temperature")).set_value(temperature).run()
    app.number_input(key=widget_key("playground.seed")).set_value(11).run()
    app.number_input(key=widget_key("playground.target_tokens")).set_value(12).run()
    check(button(app, "Write a target").click().run())
    model = plain(folders[family])
    config_ = transformers.GenerationConfig.from_dict({
        **model.generation_config.to_dict(), "num_beams": 1, "max_new_tokens": 12, "max_length": None, "min_length": 0,
        "do_sample": temperature > 0, **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {}),
    })  # fmt: skip
    torch.manual_seed(11)
    source_ids = transformers.AutoTokenizer.from_pretrained(folders[family])(SOURCE).input_ids
    expected = model.generate(torch.tensor([source_ids]), generation_config=config_)[0, 1:].tolist()
    run = active_run(app)
    assert run.target_ids == expected and state(app).source.target == tuple(expected)
    table = next(df.value for df in app.dataframe if "model probability" in df.value.columns)
    assert table["token"].tolist() and len(table) == len(expected)
    goto(app, "attention")  # every page explains the written pair
    check(app)
    assert active_run(app).target_ids == expected


# --- bad input, and the pages that do not apply --------------------------------------------------


def test_an_empty_source_twice_gives_one_message_each_time_and_keeps_the_pair(config, monkeypatch):
    app = opened(config, monkeypatch, "marian", "attention")
    before = state(app).source.active
    for _ in range(2):
        app.text_area(key=widget_key("source.new_prompt")).input("   ")
        button(app, "Analyse new source").click().run()
        assert not app.exception
        assert [e.value for e in app.error] == ["The new source is empty: type a text for the encoder to read."]
        assert state(app).source.active == before
    assert app.text_area(key=widget_key("source.target_input")).value == TARGET  # the link's target, in its box
    assert len(app.get("plotly_chart")) == 1  # the pair on screen is still drawn


def test_an_over_long_source_twice_gives_one_message_each_time_and_keeps_the_text(config, monkeypatch):
    app = opened(config, monkeypatch, "t5", "attribution")
    before = state(app).source.active
    long = "Paris " * 60
    for _ in range(2):
        app.text_area(key=widget_key("source.new_prompt")).input(long)
        button(app, "Analyse new source").click().run()
        assert not app.exception
        errors = [e.value for e in app.error]
        assert len(errors) == 1 and "The source is" in errors[0] and "shorten it" in errors[0], errors
        assert state(app).source.active == before
        assert app.text_area(key=widget_key("source.new_prompt")).value == long, "what the user typed is kept"


def test_a_bad_target_is_refused_and_stays_in_its_box(config, monkeypatch):
    app = opened(config, monkeypatch, "marian", "attention")
    before = state(app).source.active
    for typed, said in (("  ", "The target is empty"), ("Paris " * 60, "The target is")):
        for _ in range(2):
            app.text_area(key=widget_key("source.target_input")).input(typed)
            button(app, "Analyse target").click().run()
            assert not app.exception
            errors = [e.value for e in app.error]
            assert len(errors) == 1 and errors[0].startswith(said), errors
            assert state(app).source.active == before
            assert app.text_area(key=widget_key("source.target_input")).value == typed
    app.text_area(key=widget_key("source.target_input")).input("capital Paris")
    check(button(app, "Analyse target").click().run())
    assert state(app).source.active.target == "capital Paris"
    check(button(app, "Model writes it").click().run())
    run = active_run(app)
    assert state(app).source.active.target == "" and run.target is None
    assert app.text_area(key=widget_key("source.target_input")).value == "capital Paris"


@pytest.mark.parametrize("page,name", [("inside", "Inside"), ("dataset", "Dataset")])
def test_pages_that_do_not_apply_say_why_and_link_the_ones_that_do(page, name, config, monkeypatch):
    app = opened(config, monkeypatch, "marian", page)
    check(app)
    assert any(i.value.startswith(f"**{name} is not available for encoder–decoders.**") for i in app.info)
    links = [link.proto.page for link in app.get("page_link")]
    assert len(links) == 3


def test_the_pair_travels_in_links(config, monkeypatch):
    from llm_flow.config import load_config
    from llm_flow.ui.analysis import Request
    from llm_flow.ui.permalink import link_from_state, state_from_link

    app = opened(config, monkeypatch, "marian", "attention")
    check(app.segmented_control(key=widget_key("attention.stack")).set_value("cross").run())
    params = link_from_state(state(app), load_config(config))
    assert params["target"] == TARGET and params["att_stack"] == "cross" and params["model"] == "tiny-marian"
    reopened = start(config, monkeypatch, params)
    assert state(reopened).source.active == state(app).source.active
    state(app).source.active = Request(state(app).source.active.model, SOURCE, (5, 6, 7))  # as the Playground leaves it
    params = link_from_state(state(app), load_config(config))
    assert params["target_ids"] == "5,6,7" and "target" not in params
    restored, notices = state_from_link(params, load_config(config))
    assert restored.source.target == (5, 6, 7) and not notices


@pytest.mark.parametrize("family,norm", [("marian", "LayerNorm after each residual add"), ("t5", "normalised before each block")])
def test_the_model_panel_names_both_stacks(family, norm, config, monkeypatch):
    app = opened(config, monkeypatch, family, "attention")
    panel = " ".join(m.value for m in app.sidebar.markdown)
    assert f"encoder–decoder: 2 encoder and 2 decoder layers, cross-attention; {norm}" in panel
    assert "at its peak" not in panel  # the memory estimates are a decoder's: not shown for a pair


def test_the_cross_attention_numbers_download_as_transformers_returns_them(config, folders, monkeypatch):
    import io

    import pandas as pd

    from tests.app_helpers import download_files, record_downloads

    seen = record_downloads(monkeypatch)
    app = opened(config, monkeypatch, "t5", "attention")
    check(app.segmented_control(key=widget_key("attention.stack")).set_value("cross").run())
    check(app.selectbox(key=widget_key("attention.layer")).set_value(0).run())
    name, make = download_files(app, seen)["Numbers as CSV"]
    assert name == "attention-cross-head-tiny-t5.csv"
    table = pd.read_csv(io.BytesIO(make()))
    _, decoder, out = plain_pair(folders["t5"], SOURCE, TARGET)
    weights = out.cross_attentions[0][0].numpy()  # [heads, decoder tokens, source tokens]
    assert len(table) == (weights != 0).sum() and set(table["layer"]) == {0}
    head = table["head"].str.removeprefix("head ").astype(int)
    np.testing.assert_allclose(table["weight"], weights[head, table["query"], table["source"]], atol=1e-6)
    assert table["query"].max() == len(decoder) - 1 and table["source"].max() == weights.shape[-1] - 1

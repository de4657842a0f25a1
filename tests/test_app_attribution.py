"""The Attribution page driven headlessly with AppTest on the tiny models: what it shows is what
the library computes for the same request, the method is one click, a bad foil is a message, and
every generated token opens in the Explorer."""

from __future__ import annotations

import numpy as np
import pytest

from llm_flow.attribution import attribute_sequence, prepare
from llm_flow.attribution.targets import context_text
from llm_flow.models.bridge import BridgeLlm
from llm_flow.ui import attribution as attribution_page
from tests.app_helpers import active_run, download_files, goto, record_downloads, start, state, widget_key
from tests.test_generation import plain_generate, plain_model


@pytest.fixture
def app(tiny_config, monkeypatch):
    return goto(start(tiny_config, monkeypatch), "attribution")


def step_table(app):
    return next(df.value for df in app.dataframe if "entropy" in df.value.columns)


def shown_result(app):
    """The result on screen: the session's shown request, in the page's cache."""
    return app.session_state[attribution_page.CACHE][state(app).attribution.shown]


def test_generated_continuation_with_integrated_gradients_by_default(app, tiny_folders):
    assert not app.error and not app.exception
    run = active_run(app)
    model = run.model
    shown = shown_result(app)
    greedy = plain_generate(plain_model(tiny_folders["llama"]), run.tokens.tolist(), 3, do_sample=False)
    assert shown.token_ids == run.tokens.tolist() + greedy  # the config's default model is the tiny Llama
    sequence = prepare(model, run.prompt, generate=3)
    expected = attribute_sequence(model, sequence, "integrated_gradients", n_steps=32, baseline="zeros")
    table = step_table(app)
    assert list(table["probability"]) == pytest.approx(expected.step_scores["probability"], abs=1e-6)
    assert list(table["IG delta"]) == pytest.approx(expected.deltas, abs=1e-5)
    np.testing.assert_allclose(shown_result(app).scores, expected.scores, rtol=1e-5, atol=1e-7)
    assert len(app.pills(key=widget_key("attribution.step")).options) == 3
    assert [b.label for b in app.download_button] == [
        "Result as JSON (reloadable)", "Result as CSV (long table)", "Heatmap and text as HTML", "HTML", "SVG", "PNG",
    ]  # fmt: skip


def test_a_method_is_one_click_and_never_reruns_the_route_model(app, monkeypatch):
    calls = []
    real = BridgeLlm.run
    monkeypatch.setattr(BridgeLlm, "run", lambda self, prompt: calls.append(prompt) or real(self, prompt))
    app.segmented_control(key=widget_key("attribution.method")).set_value("alti_rollout").run()
    assert not app.error and not app.exception
    result = shown_result(app)
    assert result.method == "alti_rollout" and "IG delta" not in step_table(app).columns
    np.testing.assert_allclose(np.nansum(result.scores, 1), 1.0, atol=1e-5)  # shares of each step
    app.segmented_control(key=widget_key("attribution.method")).set_value("attention").run()
    app.number_input(key=widget_key("attribution.layer")).set_value(0).run()
    assert shown_result(app).options == {"layer": 0, "heads": "mean"}
    assert calls == []  # the frame's Run is reused, no route pass for a method change


def test_typed_continuation_with_a_foil_and_words(app):
    app.segmented_control(key=widget_key("attribution.source")).set_value("Type").run()
    app.text_input(key=widget_key("attribution.continuation")).input(" Paris. The").run()
    app.text_input(key=widget_key("attribution.foil")).input(" John").run()
    assert not app.error
    result = shown_result(app)
    assert not result.generated and result.foil == " John"
    assert {"probability_difference", "logit_difference"} <= set(step_table(app).columns)
    app.toggle(key=widget_key("attribution.words")).set_value(True).run()
    assert not app.error and not app.exception
    app.text_input(key=widget_key("attribution.foil")).input(" Mary").run()
    assert [e.value for e in app.error] == ["The foil ' Mary' is 2 tokens (' Mar', 'y'); give a single token "
                                           "(mind the leading space: ' London' is not 'London')."]  # fmt: skip


def test_each_generated_token_opens_in_the_explorer(app):
    run = active_run(app)
    result = shown_result(app)
    app.button(key="attribution_explore_2_button").click().run()
    assert not app.exception
    context = context_text(run.model, result.token_ids[: result.n_prompt + 2])
    opened = active_run(app)
    assert state(app).source.active.prompt == context
    assert opened.tokens.tolist() == result.token_ids[: result.n_prompt + 2]  # the same tokens again
    assert state(app).route.position == opened.n_tokens - 1  # its route explains that token
    assert any("Token to explain" in s.label for s in app.select_slider)


def test_settings_survive_a_page_switch(app):
    app.segmented_control(key=widget_key("attribution.method")).set_value("saliency").run()
    app.number_input(key=widget_key("attribution.generate")).set_value(2).run()
    goto(app, "guide")
    app.run()
    goto(app, "attribution")
    assert app.segmented_control(key=widget_key("attribution.method")).value == "saliency"
    assert app.number_input(key=widget_key("attribution.generate")).value == 2
    assert shown_result(app).n_steps == 2


def test_a_long_request_waits_for_compute_and_a_cheap_one_does_not(tiny_config, monkeypatch):
    """Above the page's limit (lowered here: the tiny prompt stands for a long one) nothing is
    computed until *Compute*; what is computed equals the library's result; methods that read
    the Run never ask; a result already made is shown again without asking."""
    monkeypatch.setattr(attribution_page, "ASK_ABOVE_TOKEN_PASSES", 10)
    app = goto(start(tiny_config, monkeypatch), "attribution")
    assert not app.error and not app.exception
    assert "runs the model" in app.info[0].value and "Compute" in [b.label for b in app.button]
    assert not any("entropy" in df.value.columns for df in app.dataframe)  # nothing computed
    assert attribution_page.CACHE not in app.session_state or not any(
        key[0] == "result" for key in app.session_state[attribution_page.CACHE]
    )  # fmt: skip

    app.button(key="attribution_compute_button").click().run()
    run = active_run(app)
    expected = attribute_sequence(run.model, prepare(run.model, run.prompt, generate=3), "integrated_gradients")
    np.testing.assert_allclose(shown_result(app).scores, expected.scores, rtol=1e-5, atol=1e-7)

    app.segmented_control(key=widget_key("attribution.method")).set_value("alti_rollout").run()
    assert not app.info and shown_result(app).method == "alti_rollout"
    app.segmented_control(key=widget_key("attribution.method")).set_value("integrated_gradients").run()
    assert not app.info and shown_result(app).method == "integrated_gradients"  # made before
    app.number_input(key=widget_key("attribution.ig_steps")).set_value(8).run()
    assert "runs the model 30 times" in app.info[0].value  # (8 points + 2 for the delta) x 3 steps


def test_a_request_past_an_hour_on_this_machine_is_refused_with_its_cost(tiny_config, monkeypatch):
    """The cost is the method's token passes over the rate of this prompt's own forward pass;
    past the page's limit (lowered here to a second: the tiny model stands for a slow machine)
    there is no Compute button, and a method that reads the Run still works."""
    from llm_flow.attribution.registry import get_method
    from llm_flow.ui.resources import token_pass_rate
    from llm_flow.wording import duration

    monkeypatch.setattr(attribution_page, "REFUSE_ABOVE_SECONDS", 1e-9)
    app = goto(start(tiny_config, monkeypatch), "attribution")
    run = active_run(app)
    rate = token_pass_rate(state(app).source.active.model)
    assert rate is not None and rate > 0
    method = get_method("integrated_gradients")
    expected = duration(method.work(prepare(run.model, run.prompt, generate=3)) / rate)
    [refusal] = [e.value for e in app.error]
    assert f": {expected} on this machine" in refusal and "llm-flow attribute" in refusal
    assert "Compute" not in [b.label for b in app.button] and not app.exception
    app.segmented_control(key=widget_key("attribution.method")).set_value("alti_rollout").run()
    assert not app.error and shown_result(app).method == "alti_rollout"


def test_every_export_has_its_own_file_name(tiny_config, monkeypatch):
    seen = record_downloads(monkeypatch)
    app = goto(start(tiny_config, monkeypatch), "attribution")
    files = download_files(app, seen)
    names = [name for name, _ in files.values()]
    assert len(names) == 6 and len(set(names)) == 6, names
    page, heatmap = files["Heatmap and text as HTML"], files["HTML"]
    assert page[0].endswith("-heatmap-and-text.html") and heatmap[0].endswith("-heatmap.html")
    page_html, heatmap_html = page[1](), heatmap[1]().decode("utf-8")
    assert "Plotly.newPlot" in heatmap_html and page_html != heatmap_html

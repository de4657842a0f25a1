"""The Attention page driven headlessly with AppTest, on the tiny models of the test config: each
view, the weighting switch, the controls for long prompts, and the way to the Explorer."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from llm_flow.ui import attention as page
from llm_flow.views.attention import head_view, token_window
from tests.app_helpers import active_run, goto, start, state, widget_key


def shown_figure(app: AppTest) -> dict:
    """The plotly figure the page sends to the browser, as JSON."""
    charts = app.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def array(value) -> np.ndarray:
    """A plotly JSON array: numpy arrays travel base64-encoded with their dtype (and shape)."""
    if isinstance(value, dict):
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return data.reshape([int(n) for n in value["shape"].split(",")]) if "shape" in value else data
    return np.asarray(value, dtype=float)


def title(figure: dict) -> str:
    return figure["layout"]["title"]["text"]


def set_value(app: AppTest, key: str, value) -> AppTest:
    """Change one of the page's widgets, as a user does, and rerun."""
    widget = next(w for kind in ("radio", "selectbox", "number_input", "multiselect", "select_slider")
                  for w in getattr(app, kind) if w.key == key)  # fmt: skip
    widget.set_value(value).run()
    assert not app.exception, [e.message for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    return app


@pytest.fixture
def app(tiny_config, monkeypatch):
    return goto(start(tiny_config, monkeypatch), "attention")


def test_head_view_opens_on_the_middle_layer_around_the_analysed_token(app):
    run = active_run(app)
    figure = shown_figure(app)
    layer = run.n_layers // 2
    assert title(figure) == f"Layer {layer}: attention weight"
    expected = head_view(run, layer, window=token_window(run, run.n_tokens - 1, 48))
    lines = [t for t in figure["data"] if t.get("mode") == "lines" and t.get("showlegend") is False]
    segments = sum(np.isnan(array(t["y"])).sum() for t in lines)
    assert segments == (expected.weights >= 0.01).sum()  # lines under 1% of full strength are not drawn
    assert legend_names(figure) == [f"head {h}" for h in range(run.model.info.n_heads)]


def legend_names(figure: dict) -> list[str]:
    return [t["name"] for t in figure["data"] if t.get("mode") == "lines" and t.get("showlegend") is not False]


@pytest.mark.parametrize("weighting,name", [("norm", "attention × ‖(v+b_V)W_O‖₂"), ("alti", "ALTI contribution")])
def test_the_weighting_switch_redraws_the_same_view(app, weighting, name):
    set_value(app, widget_key("attention.weighting"), weighting)
    run = active_run(app)
    assert title(shown_figure(app)) == f"Layer {run.n_layers // 2}: {name}"
    set_value(app, widget_key("attention.view"), "model")
    assert title(shown_figure(app)).startswith(f"All layers × heads: {name}")


def test_model_view_is_one_grid_of_the_chosen_layers_and_heads(app):
    run = active_run(app)
    set_value(app, widget_key("attention.view"), "model")
    set_value(app, widget_key("attention.heads"), [1, 3])
    figure = shown_figure(app)
    heatmap = figure["data"][0]
    window = min(page.DEFAULT_WINDOW["head"], run.n_tokens)  # the window set when the page opened
    z = array(heatmap["z"])
    assert z.shape == (run.n_layers * window, 2 * window)
    expected = head_view(run, 2, heads=[1, 3], window=token_window(run, -1, window)).weights[0]
    np.testing.assert_allclose(z[2 * window : 3 * window, window:], expected[1], atol=1e-7)
    assert figure["data"][1]["customdata"] == [[l, h] for l in range(run.n_layers) for h in (1, 3)]


def test_neuron_view_shows_the_scores_of_the_chosen_head_and_token(app):
    run = active_run(app)
    set_value(app, widget_key("attention.view"), "neuron")
    set_value(app, widget_key("attention.layer"), 2)
    set_value(app, widget_key("attention.head"), 3)
    set_value(app, widget_key("route.position"), 6)
    figure = shown_figure(app)
    assert title(figure).startswith("Layer 2, head 3, query 6 ")
    softmax = array(figure["data"][4]["z"]).ravel()
    np.testing.assert_allclose(softmax, run.layer(2).pattern.row(6)[3].numpy(), atol=1e-6)


def test_window_top_k_aggregation_and_sentence_pairs_reach_the_figure(app):
    run = active_run(app)
    set_value(app, widget_key("attention.window"), 5)
    set_value(app, widget_key("attention.top_k"), 2)
    set_value(app, widget_key("attention.aggregate"), "max")
    set_value(app, widget_key("attention.split"), 3)
    set_value(app, widget_key("attention.part"), "B->A")
    figure = shown_figure(app)
    assert f"top 2 sources per query, B->A, tokens {run.n_tokens - 5}–{run.n_tokens - 1}" in title(figure)
    queries = next(t for t in figure["data"] if t.get("mode") == "markers+text")
    assert array(queries["customdata"]).tolist() == list(range(run.n_tokens - 5, run.n_tokens))
    assert legend_names(figure) == [f"max of {run.model.info.n_heads} heads"]


def test_a_head_opens_in_the_explorer_on_its_edge(app):
    run = active_run(app)
    set_value(app, widget_key("attention.layer"), run.n_layers - 1)
    set_value(app, widget_key("attention.head"), 2)
    button = next(b for b in app.button if b.label.startswith("Open L"))
    button.click().run()
    assert not app.exception
    selected = state(app).route.selected
    assert selected.endswith(f"->A{run.n_layers - 1}_{run.n_tokens - 1}")
    assert state(app).explorer.head == 2
    assert any(s.value == selected.replace("->", " → ") for s in app.subheader)  # the Explorer's edge panel


def test_clicks_are_read_from_the_points_plotly_sends():
    assert page.clicked_point({"selection": {"points": [{"customdata": 7, "x": 0}]}}) == 7
    assert page.clicked_point({"selection": {"points": [{"customdata": [4, 2]}]}}) == [4, 2]
    assert page.clicked_point({"selection": {"points": [{"x": 1}]}}) is None
    assert page.clicked_point(None) is None


def test_settings_that_no_longer_fit_a_shorter_prompt_are_put_back_in_range(app):
    set_value(app, widget_key("attention.window"), 20)
    set_value(app, widget_key("attention.split"), 15)
    app.text_area(key=widget_key("source.new_prompt")).input("One, two")
    next(b for b in app.button if b.label == "Analyse new prompt").click().run()
    assert not app.exception and not app.error
    run = active_run(app)
    assert run.prompt == "One, two"
    assert drawn_window(app) <= run.n_tokens and state(app).attention.split == 0
    assert shown_figure(app)


def test_a_window_cut_to_a_short_prompt_grows_back_with_a_longer_one(app):
    """A short prompt cuts the window to its length; the next, longer prompt gets the default
    window again (not the few tokens the short one had); a window the user chose stays."""

    def analyse(text: str):
        app.text_area(key=widget_key("source.new_prompt")).input(text)
        next(b for b in app.button if b.label == "Analyse new prompt").click().run()
        assert not app.exception and not app.error
        return active_run(app)

    short = analyse("One, two")
    assert drawn_window(app) == short.n_tokens < page.DEFAULT_WINDOW["head"]
    long = analyse("One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve")
    assert long.n_tokens > short.n_tokens
    assert drawn_window(app) == min(page.DEFAULT_WINDOW["head"], long.n_tokens)
    set_value(app, widget_key("attention.window"), 7)
    analyse("One, two, three, four, five, six, seven, eight, nine, ten")
    assert drawn_window(app) == 7


def drawn_window(app) -> int:
    return app.number_input(key=widget_key("attention.window")).value


def test_the_explorers_edge_panel_opens_its_head_here(app):
    run = active_run(app)
    set_value(app, widget_key("attention.layer"), run.n_layers - 1)
    next(b for b in app.button if b.label.startswith("Open L")).click().run()  # to the Explorer, on an edge
    goto(app, "explorer")  # AppTest follows st.switch_page for one run only; stay on the Explorer
    edge = state(app).route.selected
    app.selectbox(key=widget_key("explorer.head")).set_value(1).run()
    next(b for b in app.button if b.label.startswith("Open L") and "Attention page" in b.label).click().run()
    assert not app.exception, [e.message for e in app.exception]
    layer, position = run.n_layers - 1, int(edge.split("_")[-1])
    assert title(shown_figure(app)) == f"Layer {layer}: attention weight"
    assert state(app).attention.heads == (1,) and state(app).attention.focus == position
    assert legend_names(shown_figure(app)) == ["head 1"]

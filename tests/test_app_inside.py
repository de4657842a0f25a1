"""The Inside page driven headlessly with AppTest on the tiny models of the test config: it opens on
the overview with every stage collapsed, the guided tour walks through every stage with Next and
back with Previous (each step expanding its stage, with its formula), a stage expands in place,
a link reopens the tour step, layer and head, and a click on a layer walks through its block."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from llm_flow.ui import inside as page
from llm_flow.ui.permalink import link_from_state
from llm_flow.config import load_config
from llm_flow.views.inside import shared_walkthrough
from llm_flow.views.sampling import SamplingSettings
from tests.app_helpers import active_run, goto, start, state, widget_key


def ok(app: AppTest) -> AppTest:
    assert not app.exception, [e.message for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    return app


def button(app: AppTest, key: str):
    return next(b for b in app.button if b.key == key)


def charts(app: AppTest) -> dict[str, dict]:
    return {c.proto.id: json.loads(c.proto.spec) for c in app.get("plotly_chart")}


def formulas(app: AppTest) -> list[str]:
    """The LaTeX on screen (st.latex wraps it in $$ … $$)."""
    return [latex.value.strip().removeprefix("$$").removesuffix("$$").strip() for latex in app.latex]


def chart_keys(app: AppTest) -> list[str]:
    """Keys of the page's charts, in order (Streamlit puts a widget's key at the end of its id)."""
    return [c.proto.id.rsplit("-", 1)[-1] for c in app.get("plotly_chart")]


@pytest.fixture
def app(tiny_config, monkeypatch):
    return ok(goto(start(tiny_config, monkeypatch), "inside"))


def walk_of(app: AppTest):
    run = active_run(app)
    inside = state(app).inside
    layer = run.n_layers // 2 if inside.layer is None else inside.layer
    play = state(app).playground
    settings = SamplingSettings(play.temperature, play.top_k, play.top_p)
    return shared_walkthrough(run, layer, inside.head, state(app).route.position, page.WINDOW, settings, play.seed)


def test_opens_on_the_overview_with_every_stage_collapsed(app):
    walk = walk_of(app)
    assert [s.value for s in app.subheader] == ["Input", f"Block {walk.layer}", "Output"]
    keys = chart_keys(app)
    assert keys[0] == page.OVERVIEW_CHART
    assert keys[1:] == [f"inside_{key}_strip" for key in walk.keys]  # one strip per stage, nothing expanded
    assert len(app.latex) == 0 and state(app).inside.stage is None
    assert any("Guided tour · overview" in m.value for m in app.markdown)
    assert button(app, "inside_previous_button").disabled


def test_the_tour_walks_every_stage_and_back(app, tiny_config):
    walk = walk_of(app)
    config = load_config(tiny_config)
    for step, stage in enumerate(walk.stages, start=1):
        ok(button(app, "inside_next_button").click().run())
        inside = state(app).inside
        assert (inside.step, inside.stage) == (step, stage.key)
        assert formulas(app) == [stage.formula]  # the step's stage alone is expanded
        assert any(f"{step} of {len(walk.stages)}: {page.plain(stage.title)}" in m.value for m in app.markdown)
        assert link_from_state(state(app), config)["in_step"] == str(step)
        if stage.key == "attention":
            detail = [c for key, c in charts(app).items() if key.endswith("inside_attention_detail")]
            assert len(detail) == 1
            shapes = detail[0]["layout"]["shapes"]
            row = walk.position - walk.window.start
            assert shapes and all(s["y0"] == row - 0.5 for s in shapes)  # the query row, outlined
    assert button(app, "inside_next_button").disabled
    for step in range(len(walk.stages) - 1, -1, -1):
        ok(button(app, "inside_previous_button").click().run())
        assert state(app).inside.step == step
    assert state(app).inside.stage is None and len(app.latex) == 0


def test_a_stage_expands_in_place_and_collapses(app):
    ok(button(app, "inside_attention_button").click().run())
    walk = walk_of(app)
    assert state(app).inside.stage == "attention" and state(app).inside.step == walk.keys.index("attention") + 1
    keys = chart_keys(app)
    assert keys.index("inside_attention_detail") == keys.index("inside_attention_strip") + 1  # right below its strip
    ok(button(app, "inside_attention_button").click().run())
    assert state(app).inside.stage is None and "inside_attention_detail" not in chart_keys(app)


def test_a_link_reopens_the_tour_step_layer_and_head(tiny_config, monkeypatch):
    link = {"in_step": "5", "in_stage": "attention", "in_layer": "2", "in_head": "3", "token": "3"}
    app = ok(goto(start(tiny_config, monkeypatch, link), "inside"))
    inside = state(app).inside
    assert (inside.step, inside.stage, inside.layer, inside.head) == (5, "attention", 2, 3)
    assert app.selectbox(key=widget_key("inside.layer")).value == 2
    assert app.selectbox(key=widget_key("inside.head")).value == 3
    assert formulas(app) == [walk_of(app).stage("attention").formula]


def test_a_stage_the_model_lacks_falls_back_to_the_overview(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch, {"model": "tiny-gpt2", "in_stage": "rotary"})
    app = goto(app, "inside")
    assert not app.exception
    assert any("has no stage 'rotary'" in w.value for w in app.warning)
    assert state(app).inside.stage is None


def test_the_layer_a_click_chooses_is_walked_through(app):
    state(app).inside.layer = 0  # what the flow's click callback writes (the click itself: the browser test)
    ok(app.run())
    assert [s.value for s in app.subheader][1] == "Block 0"
    assert app.selectbox(key=widget_key("inside.layer")).value == 0

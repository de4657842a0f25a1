"""The Explorer's "Check this route" and "Remove this edge", driven with AppTest on a tiny model."""

from __future__ import annotations

import pytest

import llm_flow
import llm_flow.ui.route_check as route_check_ui
from llm_flow.interventions import check_edge, check_route
from llm_flow.wording import probability
from tests.app_helpers import active_run, goto, start, widget_key


def button(app, label: str):
    return next(b for b in app.button if b.label == label)


def result_table(app):
    return next(df.value for df in app.dataframe if "condition" in df.value.columns)


@pytest.fixture
def app(tiny_config, monkeypatch):
    return start(tiny_config, monkeypatch)


@pytest.fixture
def counted(monkeypatch):
    """Count the forward-pass work the page asks for."""
    calls = {"check": 0, "edge": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(route_check_ui, "check_route", counting("check", check_route))
    monkeypatch.setattr(route_check_ui, "check_edge", counting("edge", check_edge))
    return calls


def test_check_this_route_shows_the_library_result_and_is_not_recomputed(app, counted):
    assert not [df for df in app.dataframe if "condition" in df.value.columns], "nothing runs before the click"
    app.number_input(key=widget_key("check.draws")).set_value(3).run()
    button(app, "Check this route").click().run()
    assert not app.exception and not app.error
    run = active_run(app)
    expected = check_route(run, llm_flow.build_graph(run, -1, 0.04, True), draws=3, seed=0)
    shown = result_table(app)
    assert list(shown["condition"]) == list(expected.table()["condition"])
    assert list(shown["probability"]) == [probability(p) for p in expected.table()["probability"]]
    assert shown["against random"][1] == f"above {expected.only_percentile:.0f}% of the draws"
    assert any("higher probability than" in m.value for m in app.markdown)
    assert counted["check"] == 1

    app.number_input(key=widget_key("explorer.temperature")).set_value(2.0).run()  # unrelated setting
    app.selectbox(key=widget_key("route.selected")).select_index(1).run()  # click a node
    assert list(result_table(app)["probability"]) == list(shown["probability"])
    app.slider(key=widget_key("route.threshold")).set_value(0.1).run()  # another route: no stale result
    assert not [df for df in app.dataframe if "condition" in df.value.columns]
    app.slider(key=widget_key("route.threshold")).set_value(0.04).run()  # back: the kept result, no new passes
    assert len(result_table(app)) == 5
    assert counted["check"] == 1


def test_threshold_curve(app):
    app.number_input(key=widget_key("check.draws")).set_value(1).run()
    button(app, "Check this route").click().run()
    button(app, "Threshold curve").click().run()
    assert not app.exception and not app.error
    curve = next(df.value for df in app.dataframe if "threshold" in df.value.columns)
    assert len(curve) == 9 and curve["probability"].between(0, 1).all()


def test_remove_this_edge(app, counted):
    run = active_run(app)
    graph = llm_flow.build_graph(run, -1, 0.04, True)
    source, dest = next((u, v) for u, v, d in graph.edges(data=True) if d["kind"] == "attention")
    app.selectbox(key=widget_key("route.selected")).select(f"{source}->{dest}").run()
    button(app, "Remove this edge").click().run()
    assert not app.exception and not app.error
    expected = check_edge(run, graph, source, dest)
    metric = app.metric[0]
    assert metric.value == probability(expected.removed.probability)
    assert f"{expected.n_parts:,} parts removed" in " ".join(c.value for c in app.caption)
    app.number_input(key=widget_key("explorer.temperature")).set_value(1.5).run()
    assert app.metric[0].value == metric.value and counted["edge"] == 1


def test_check_settings_survive_a_page_switch(app):
    app.number_input(key=widget_key("check.draws")).set_value(7).run()
    app.number_input(key=widget_key("check.seed")).set_value(3).run()
    goto(app, "guide")
    goto(app, "explorer")
    assert app.number_input(key=widget_key("check.draws")).value == 7
    assert app.number_input(key=widget_key("check.seed")).value == 3

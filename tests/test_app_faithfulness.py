"""The Explorer's faithfulness check (AppTest, tiny models): the numbers on screen are the
library's (llm_flow.faithfulness, itself checked against plain transformers in
tests/test_faithfulness.py), the smallest route is one click away, EAP-IG can draw the graph,
and the counterfactual's route is shown beside this one."""

from __future__ import annotations

import json

import pytest

import llm_flow
from llm_flow.faithfulness import AblationSpec, budget_curve, faithfulness, get_scorer, prepare, top_k
from llm_flow.ui.faithfulness_panel import contrast_defaults
from tests.app_helpers import active_run, start, state, widget_key


@pytest.fixture
def app(tiny_config, monkeypatch):
    return start(tiny_config, monkeypatch)


def measure(app) -> None:
    next(b for b in app.button if b.label == "Measure").click().run()
    assert not app.exception, [e.message for e in app.exception]


def metric(app, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


def test_the_route_s_f_and_completeness_are_the_library_s(app):
    measure(app)
    run = active_run(app)
    graph = llm_flow.build_graph(run, -1, 0.04, True)
    answer, foil = contrast_defaults(run, run.n_tokens - 1, state(app).faith)
    problem = prepare(run, answer, foil, AblationSpec("zero"), target=run.n_tokens - 1)
    expected = faithfulness(problem, graph)
    assert metric(app, "f of this route") == f"{expected.faithfulness:.3f}"
    assert metric(app, "completeness") == f"{expected.completeness:.3f}"
    table = next(df.value for df in app.dataframe if "scorer" in df.value.columns)
    curve = budget_curve(problem, get_scorer("alti"))
    assert list(table["scorer"]) == ["ALTI route", "random"]
    assert table["CPR (higher better)"].iloc[0] == pytest.approx(round(curve.cpr, 3))
    assert state(app).faith.shown and dict(app.query_params).get("faith") in ("1", ["1"])


def test_the_smallest_route_is_one_click_away(app):
    app.number_input(key=widget_key("faith.target")).set_value(0.5).run()
    measure(app)
    button = next((b for b in app.button if b.label.startswith("Show that route")), None)
    if button is None:  # the route on screen is already the smallest one
        assert any("the route on screen" in m.value for m in app.markdown)
        return
    threshold = float(button.label.split("threshold ")[1].rstrip(")"))
    button.click().run()
    assert state(app).route.threshold == threshold and state(app).route.renormalize is False
    assert app.slider(key=widget_key("route.threshold")).value == threshold


def test_eap_ig_draws_as_many_edges_as_the_route_keeps(app):
    app.multiselect(key=widget_key("faith.scorers")).set_value(["alti", "eap-ig"]).run()
    measure(app)
    app.radio(key=widget_key("faith.score_by")).set_value("eap-ig").run()
    assert not app.exception
    assert any("Edges scored by EAP-IG" in c.value for c in app.caption)
    run = active_run(app)
    answer, foil = contrast_defaults(run, run.n_tokens - 1, state(app).faith)
    problem = prepare(run, answer, foil, AblationSpec("zero"), target=run.n_tokens - 1)
    count = int(problem.circuit(llm_flow.build_graph(run, -1, 0.04, True)).sum())
    kept = top_k(get_scorer("eap-ig").scores(problem), count)
    spec = json.loads(next(c for c in app.get("plotly_chart") if "explorer_route_chart" in c.proto.id).proto.spec)
    drawn = {i for t in spec["data"] for i in (t.get("customdata") or []) if isinstance(i, str) and "->" in i}
    names = {"->".join(problem.edges.names(i)) for i in kept.nonzero().flatten().tolist()}
    assert drawn and drawn - {e for e in drawn if e.split("->")[1].startswith("M")} <= names


def test_the_counterfactual_s_route_is_shown_beside(app):
    run = active_run(app)
    candidates = [run.prompt.replace("France", other) for other in ("Italy", "Spain", "Franca", "Frince", "Grance")]
    counterfactual = next((c for c in candidates if len(run.model.encode(c)) == run.n_tokens), None)
    if counterfactual is None:
        pytest.skip("no candidate counterfactual has the prompt's token count under the tiny tokenizer")
    app.radio(key=widget_key("faith.ablation")).set_value("patching").run()
    app.text_input(key=widget_key("faith.counterfactual")).input(counterfactual).run()
    app.toggle(key=widget_key("faith.compare")).set_value(True).run()
    assert not app.exception
    assert any("edges in both" in c.value for c in app.caption)
    assert any(counterfactual in c.value for c in app.caption)

"""The Streamlit app driven headlessly with AppTest: the same script, widgets and panels a user
gets, on tiny random models (and on SmolLM2 when it is available)."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

import llm_flow
from llm_flow.config import load_config
from llm_flow.models.bridge import BridgeLlm
from llm_flow.ui.explorer import clicked_element
from llm_flow.figures.route import route_figure
from llm_flow.routes.nodes import NodeId
from llm_flow.ui.resources import ModelKey, get_model
from llm_flow.views.heads import edge_heads
from llm_flow.views.logit_lens import logit_lens
from llm_flow.views.neurons import top_neurons
from llm_flow.views.predictions import top_predictions
from llm_flow.views.promoted import head_output, promoted_tokens
from llm_flow.views.tokens import display_token
from tests.app_helpers import TIMEOUT, active_run, start, state, widget_key
from tests.conftest import REPO

TABLE_COLUMNS = {
    "predictions_table": ["token", "probability", "logit"],
    "lens_table": ["token", "probability", "change"],
    "neuron_table": ["neuron", "contribution", "activation"],
}


def table(app: AppTest, name: str):
    """A table of the page, recognised by its columns."""
    return next(df.value for df in app.dataframe if list(df.value.columns) == TABLE_COLUMNS[name])


def analyse_button(app: AppTest):
    return next(b for b in app.button if b.label == "Analyse new prompt")


def load_custom_model(app: AppTest, source: str) -> None:
    app.text_input(key=widget_key("source.custom_model_input")).input(source)
    next(b for b in app.button if b.label == "Load model").click().run()


def caption_text(app: AppTest) -> str:
    return " ".join(c.value for c in app.caption)


@pytest.fixture
def app(tiny_config, monkeypatch):
    return start(tiny_config, monkeypatch)


def test_first_screen_is_an_analysed_graph(app, tiny_config):
    config = load_config(tiny_config)
    request = state(app).source.active
    assert request.model.source == config.default_model and request.prompt == config.prompts[0]
    run = active_run(app)
    graph = llm_flow.build_graph(run, -1, 0.04, True)
    assert f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges for token {run.n_tokens - 1}" in caption_text(app)
    predictions = table(app, "predictions_table")
    expected = top_predictions(run, -1, k=10)
    assert list(predictions["token"]) == [display_token(p.token) for p in expected]
    assert list(predictions["probability"]) == pytest.approx([p.probability for p in expected])
    assert not app.error


def test_threshold_and_target_changes_do_not_rerun_the_model(app, monkeypatch):
    calls = []
    real_run = BridgeLlm.run
    monkeypatch.setattr(BridgeLlm, "run", lambda self, prompt: calls.append(prompt) or real_run(self, prompt))
    run = active_run(app)
    app.slider(key=widget_key("route.threshold")).set_value(0.1).run()
    app.select_slider(key=widget_key("route.position")).set_value(2).run()
    assert calls == [] and not app.exception
    graph = llm_flow.build_graph(run, 2, 0.1, True)
    assert f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges for token 2" in caption_text(app)
    app.checkbox(key=widget_key("route.renormalize")).uncheck().run()
    graph = llm_flow.build_graph(run, 2, 0.1, False)
    assert f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges for token 2" in caption_text(app)
    assert calls == []


def inspect(app: AppTest, predicate) -> str:
    """Choose under Inspect the first element whose id satisfies `predicate`."""
    labels = app.selectbox(key=widget_key("route.selected")).options  # "A1_2 · after attention · ..." / "I0_1 → A1_2 · ..."
    ids = [label.split(" · ")[0].replace(" → ", "->") for label in labels]
    choice = next(i for i in ids if predicate(i))
    app.selectbox(key=widget_key("route.selected")).select(choice).run()
    assert not app.exception, [e.message for e in app.exception]
    assert state(app).route.selected == choice
    return choice


def _layer_position(name: str) -> tuple[int, int]:
    node = NodeId.parse(name)
    return node.layer, node.position


def test_residual_node_shows_logit_lens_and_promotions(app):
    run = active_run(app)
    node = inspect(app, lambda o: o.startswith(f"I{run.n_layers - 1}_"))
    layer, position = _layer_position(node)
    lens = table(app, "lens_table")
    expected = logit_lens(run, "I", layer, position, k=10, normalize=True)
    assert list(lens["token"]) == [display_token(t.token) for t in expected]
    assert list(lens["probability"]) == pytest.approx([t.probability for t in expected])
    app.checkbox(key=widget_key("explorer.lens_normalize")).uncheck().run()
    raw = logit_lens(run, "I", layer, position, k=10, normalize=False)
    assert list(table(app, "lens_table")["token"]) == [display_token(t.token) for t in raw]
    assert any("promoted" in df.value.columns for df in app.dataframe)


def test_attention_edge_shows_heads_maps_and_promotions(app):
    run = active_run(app)
    edge = inspect(app, lambda o: o.startswith("I") and "->A" in o and o.split("->")[0].split("_")[1] != o.split("_")[-1])
    source, target = edge.split("->")
    layer, position = _layer_position(target)
    source_position = NodeId.parse(source).position
    shares = edge_heads(run, layer, source_position, position)
    assert app.selectbox(key=widget_key("explorer.head")).options == [f"H{s.head} ({s.contribution:.3f})" for s in shares]
    assert state(app).explorer.head == shares[0].head, "the strongest head is preselected"
    promoted = [display_token(t.token) for t in promoted_tokens(run.model, head_output(run, layer, position, shares[0].head)).promoted]
    shown = next(df.value for df in app.dataframe if "promoted" in df.value.columns)
    assert list(shown["promoted"]) == promoted
    other = shares[1].head
    app.selectbox(key=widget_key("explorer.head")).select(other).run()
    promoted = [display_token(t.token) for t in promoted_tokens(run.model, head_output(run, layer, position, other)).promoted]
    shown = next(df.value for df in app.dataframe if "promoted" in df.value.columns)
    assert list(shown["promoted"]) == promoted


def test_ffn_node_shows_ranked_neurons(app):
    run = active_run(app)
    node = inspect(app, lambda o: o.startswith("M"))
    layer, position = _layer_position(node)
    neurons = table(app, "neuron_table")
    expected = top_neurons(run, layer, position, k=20)
    assert list(neurons["neuron"]) == [n.neuron for n in expected]
    assert list(neurons["activation"]) == pytest.approx([n.activation for n in expected])
    app.slider(key=widget_key("explorer.neuron_count")).set_value(7).run()
    assert len(table(app, "neuron_table")) == 7


def test_clicked_point_selects_the_same_element():
    """The click handler reads the element id plotly sends back for a clicked point."""
    state = {"selection": {"points": [{"curve_number": 3, "point_index": 0, "customdata": "A1_2"}]}}
    assert clicked_element(state) == "A1_2"
    assert clicked_element({"selection": {"points": [{"customdata": ["I0_1->A1_2"]}]}}) == "I0_1->A1_2"
    assert clicked_element({"selection": {"points": []}}) is None
    assert clicked_element(None) is None


def test_every_graph_element_is_clickable(tiny_models):
    """Each node and each edge appears as a point whose customdata is its id."""
    run = tiny_models("gpt2").run("The capital of France is")
    graph = llm_flow.build_graph(run, -1, 0.02)
    figure = route_figure(graph)
    ids = {c for trace in figure.data if trace.customdata is not None for c in trace.customdata}
    assert set(graph.nodes) <= ids
    assert {f"{u}->{v}" for u, v in graph.edges} <= ids


def test_over_long_prompt_is_refused_and_the_previous_graph_stays(app):
    before = state(app).source.active
    app.text_area(key=widget_key("source.new_prompt")).input("Paris " * 100)
    analyse_button(app).click().run()
    assert not app.exception
    assert any("configured limit" in e.value for e in app.error)
    assert state(app).source.active == before
    assert app.text_area(key=widget_key("source.new_prompt")).value == "Paris " * 100, "what the user typed is kept"
    assert "nodes" in caption_text(app)


def test_new_prompt_is_analysed_and_added(app):
    app.text_area(key=widget_key("source.new_prompt")).input("One, two, three, four,")
    analyse_button(app).click().run()
    assert not app.error
    assert state(app).source.active.prompt == "One, two, three, four,"
    assert "One, two, three, four," in app.selectbox(key=widget_key("source.prompt_choice")).options


def test_empty_new_prompt_is_refused(app):
    app.text_area(key=widget_key("source.new_prompt")).input("   ")
    analyse_button(app).click().run()
    assert any("empty" in e.value for e in app.error)


def test_model_that_fails_to_load_keeps_the_previous_state(app, monkeypatch):
    import llm_flow.ui.resources as resources

    attempts = []
    real_load = resources.load_model
    monkeypatch.setattr(resources, "load_model", lambda *a, **k: attempts.append(a[0]) or real_load(*a, **k))
    before = state(app).source.active
    load_custom_model(app, "./no/such/folder")
    assert not app.exception
    assert any("Unknown model './no/such/folder'" in e.value for e in app.error)
    assert state(app).source.active == before
    assert app.text_input(key=widget_key("source.custom_model_input")).value == "./no/such/folder"
    app.select_slider(key=widget_key("route.position")).set_value(1).run()
    assert "for token 1" in caption_text(app), "the previous analysis is still usable"
    assert attempts == ["./no/such/folder"], "a failed model is not reloaded on every interaction"


def test_a_prompt_after_a_model_that_failed_is_analysed_on_the_model_shown(app, tiny_config):
    """A model typed in the box that fails to load must not be asked for again by the next
    prompt: the prompt is analysed (or refused for itself) on the model on screen, and the box
    keeps what was typed."""
    before = state(app).source.active
    load_custom_model(app, "./no/such/folder")
    app.text_area(key=widget_key("source.new_prompt")).input("One, two, three, four")
    analyse_button(app).click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert state(app).source.active.model == before.model
    assert state(app).source.active.prompt == "One, two, three, four"
    assert app.text_input(key=widget_key("source.custom_model_input")).value == "./no/such/folder"
    limit = load_config(tiny_config).max_prompt_tokens
    load_custom_model(app, "./no/such/folder")
    app.text_area(key=widget_key("source.new_prompt")).input("word " * (2 * limit))
    analyse_button(app).click().run()
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "Unknown model" not in errors[0] and f"{limit}" in errors[0], errors
    assert state(app).source.active.prompt == "One, two, three, four"


def test_switching_models(app):
    app.selectbox(key=widget_key("source.model_choice")).select("tiny-gpt_neox").run()
    assert state(app).source.active.model.source == "tiny-gpt_neox"
    assert not app.error and "nodes" in caption_text(app)


def test_demo_mode_offers_only_configured_choices(tiny_config, tmp_path, monkeypatch):
    config = json.loads(tiny_config.read_text())
    config.update(demo_mode=True, prompts_file=str(tiny_config.parent / "prompts.json"))
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(config))
    app = start(path, monkeypatch)
    assert not [t for t in app.text_input if t.key == widget_key("source.custom_model_input")]
    assert not app.text_area
    assert "nodes" in caption_text(app)


def test_sessions_share_the_model_but_not_their_state(tiny_config, monkeypatch):
    loads = []
    import llm_flow.ui.resources as resources

    real_load = resources.load_model
    monkeypatch.setattr(resources, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setenv("LLM_FLOW_CONFIG", str(tiny_config))
    get_model.__globals__["_models"].clear()
    first = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    second = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    second.selectbox(key=widget_key("source.prompt_choice")).select("One, two, three,").run()
    first.slider(key=widget_key("route.threshold")).set_value(0.15).run()
    assert loads == ["tiny-llama"], "one model load for both sessions"
    assert state(first).source.active.prompt == "The capital of France is"
    assert state(second).source.active.prompt == "One, two, three,"
    assert state(second).route.threshold == 0.04
    key = state(first).source.active.model
    assert get_model(key) is get_model(state(second).source.active.model)


@pytest.mark.real_model
def test_default_app_on_smollm2_predicts_paris(smollm2, monkeypatch):
    app = start(REPO / "config" / "local.json", monkeypatch)
    assert state(app).source.active.model == ModelKey("smollm2-135m", "cpu", "float32", str(REPO / "config" / "local.json"))
    assert table(app, "predictions_table")["token"].iloc[0] == "·Paris"
    inspect(app, lambda o: o.startswith("M"))
    assert len(table(app, "neuron_table")) == 20


def test_compact_figure_keeps_every_element_and_only_route_columns(tiny_models):
    run = tiny_models("llama").run("When Mary and John went to the store, John gave a drink to")
    graph = llm_flow.build_graph(run, -1, 0.1)
    figure = route_figure(graph, compact=True)
    ids = {c for trace in figure.data if trace.customdata is not None for c in trace.customdata}
    assert set(graph.nodes) <= ids and {f"{u}->{v}" for u, v in graph.edges} <= ids
    positions = sorted({d["position"] for _, d in graph.nodes(data=True)})
    assert list(figure.layout.xaxis.ticktext) == [f"{p}:{display_token(run.str_tokens[p])}" for p in positions]
    assert len(route_figure(graph).layout.xaxis.ticktext) == run.n_tokens


@pytest.mark.parametrize(("family", "columns"), [("gpt_neox", 1), ("llama", 2)])
def test_a_route_that_reaches_few_tokens_is_not_stretched_over_the_figure(tiny_models, family, columns):
    """A compact figure of one or two token columns: its edge markers, a fraction of a column
    beside their nodes, stay close to their column (not a tenth of the figure away, like a
    column of their own), and every node and marker is inside the axis."""
    run = tiny_models(family).run("When Mary and John went to the store, John gave a drink to")
    figure = route_figure(llm_flow.build_graph(run, -1, 0.5), compact=True)
    assert len(figure.layout.xaxis.ticktext) == columns, "the case is a route that reaches few tokens"
    low, high = figure.layout.xaxis.range
    xs = [x for trace in figure.data for x in trace.x if x is not None]
    assert low < min(xs) and max(xs) < high
    node_x = {name: x for trace in figure.data if trace.mode == "markers" and trace.name != "edge (midpoint)"
              for name, x in zip(trace.customdata, trace.x)}  # fmt: skip
    markers = next(trace for trace in figure.data if trace.name == "edge (midpoint)")
    offsets = [abs(x - node_x[edge.split("->")[0]]) for edge, x in zip(markers.customdata, markers.x)
               if node_x[edge.split("->")[0]] == node_x[edge.split("->")[1]]]  # edges up a node column
    assert offsets and max(offsets) / (high - low) <= 0.05


def test_residual_and_ffn_edges_show_their_node_panels(app):
    run = active_run(app)
    edge = inspect(app, lambda o: o.startswith("A") and "->I" in o)
    assert len(table(app, "lens_table")) == 10
    layer, position = _layer_position(edge.split("->")[1])
    expected = logit_lens(run, "I", layer, position, k=10)
    assert list(table(app, "lens_table")["token"]) == [display_token(t.token) for t in expected]
    inspect(app, lambda o: o.startswith("M") and "->I" in o)
    assert len(table(app, "neuron_table")) == 20

"""The Explorer on an encoder–decoder, driven headlessly with AppTest on tiny Marian (post-LN) and
T5 (pre-RMSNorm) at unit gain (`save_strong_model`: at transformers' default init the residual
carries > 99 % of every state and a route would have no cross edge). The drawn route must be the
one `llm_flow.seq2seq_route` computes on a freshly loaded model; its settings and selection
survive a page switch and travel in links; a bad link position gives one clear message; a
decoder node's logit lens is the model's tail on the state plain transformers computes."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import torch

import llm_flow
from llm_flow.config import load_config
from llm_flow.routes.graph import RouteOf
from llm_flow.routes.nodes import NodeId
from llm_flow.routes.seq2seq_graph import default_decoder_position
from llm_flow.ui.permalink import link_from_state
from llm_flow.ui.seq2seq_explorer import NO_CHECKS, NO_LENS, SPINNER
from tests.app_helpers import active_run, download_files, goto, record_downloads, start, state, widget_key
from llm_flow.views.tokens import display_token
from tests.test_seq2seq_lens import reference_lens
from tests.test_seq2seq_routes import save_strong_model

FAMILIES = ["marian", "t5"]
SOURCE = "The capital of France is Paris."
TARGET = "Paris is the capital"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_seq2seq_explorer")
    return {family: save_strong_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def config(folders, tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_seq2seq_explorer_config")
    (folder / "prompts.json").write_text(json.dumps([SOURCE]))
    path = folder / "local.json"
    path.write_text(json.dumps({
        "default_model": "tiny-marian",
        "models": {f"tiny-{family}": {"source": str(path)} for family, path in folders.items()},
        "prompts_file": "prompts.json", "limits": {"max_prompt_tokens": 40},
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def fresh(folders):
    """Each family loaded anew, outside the app, with its own run of the pair."""
    return {family: llm_flow.load_model(folder).run_pair(SOURCE, TARGET) for family, folder in folders.items()}


def explorer(config, monkeypatch, family: str, **params: str):
    app = start(config, monkeypatch, {"model": f"tiny-{family}", "target": TARGET, **params})
    return check(goto(app, "explorer"))


def check(app):
    assert not app.exception, [e.message for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    return app


def drawn(app):
    """The route the page drew: the one kept with the session's run under the page's settings."""
    route = state(app).route
    graph = active_run(app).derived_store.peek(RouteOf(route.position, route.threshold, route.renormalize))
    assert graph is not None, "the page keeps its route with the run"
    figure = app.get("plotly_chart")[0].proto.spec
    ids = {c for trace in json.loads(figure)["data"] for c in (trace.get("customdata") or [])}
    elements = set(graph.nodes) | {f"{u}->{v}" for u, v in graph.edges}
    assert ids == elements, "every node and edge of the route is drawn, and nothing else"
    return graph


def assert_same_route(shown, expected):
    assert set(shown.nodes) == set(expected.nodes)
    assert set(shown.edges) == set(expected.edges)
    for u, v, data in expected.edges(data=True):
        assert shown.edges[u, v]["kind"] == data["kind"]
        assert shown.edges[u, v]["weight"] == pytest.approx(data["weight"], abs=1e-6)
        if "heads" in data:
            assert shown.edges[u, v]["heads"] == pytest.approx(data["heads"], abs=1e-6)


def crosses(graph) -> list[tuple[str, str]]:
    return [(u, v) for u, v, d in graph.edges(data=True) if d["kind"] == "cross"]


def select(app, element: str):
    app.selectbox(key=widget_key("route.selected")).set_value(element).run()
    return check(app)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_drawn_route_is_seq2seq_route_on_a_fresh_model(family, config, fresh, monkeypatch):
    app = explorer(config, monkeypatch, family)
    run = fresh[family]
    position = default_decoder_position(run)
    assert state(app).route.position == position  # the last word of the target, not its end token
    expected = llm_flow.seq2seq_route(run, position, 0.04, True)
    shown = drawn(app)
    assert_same_route(shown, expected)
    assert crosses(expected) and any(d["stack"] == "encoder" for _, d in expected.nodes(data=True))  # both stacks
    captions = " ".join(c.value for c in app.caption)
    assert f"{expected.number_of_nodes()} nodes, {expected.number_of_edges()} edges for decoder position {position}" in captions
    assert NO_CHECKS in captions
    assert SPINNER.startswith("Building the route") and "8.6 s at 16 tokens, 68 s at 128" in SPINNER


@pytest.mark.parametrize("family", FAMILIES)
def test_position_and_threshold_change_the_route_as_the_library_does(family, config, fresh, monkeypatch):
    app = explorer(config, monkeypatch, family)
    first = drawn(app)
    run = fresh[family]
    app.select_slider(key=widget_key("route.position")).set_value(1).run()
    app.slider(key=widget_key("route.threshold")).set_value(0.1).run()
    check(app)
    expected = llm_flow.seq2seq_route(run, 1, 0.1, True)
    assert_same_route(drawn(app), expected)
    assert set(expected.edges) != set(first.edges)  # not vacuous: the settings changed the route
    app.checkbox(key=widget_key("route.renormalize")).uncheck().run()
    assert_same_route(drawn(check(app)), llm_flow.seq2seq_route(run, 1, 0.1, False))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cross_edge_panel_shows_its_weight_and_heads_and_its_node_the_lens(family, config, folders, fresh, monkeypatch):
    app = explorer(config, monkeypatch, family)
    expected = llm_flow.seq2seq_route(fresh[family], state(app).route.position, 0.04, True)
    u, v = max(crosses(expected), key=lambda e: expected.edges[e]["weight"])
    data = expected.edges[u, v]
    select(app, f"{u}->{v}")
    captions = " ".join(c.value for c in app.caption)
    assert f"cross edge, weight {data['weight']:.3f} (after threshold and renormalisation)" in captions
    assert any("Cross-attention" in m.value and f"source token {int(u.split('_')[1])}" in m.value for m in app.markdown)
    heads = next(df.value for df in app.dataframe if list(df.value.columns) == ["head", "contribution"])
    shown = dict(zip(heads["head"], heads["contribution"]))
    assert shown == pytest.approx({f"H{h}": w for h, w in enumerate(data["heads"])}, abs=1e-6)
    assert len(shown) == fresh[family].model.info.n_heads and max(shown.values()) > 1e-3  # a real split
    node = v  # the decoder state after cross-attention: its incoming edges and its logit lens
    select(app, node)
    incoming = next(df.value for df in app.dataframe if list(df.value.columns) == ["from", "kind", "weight"])
    assert dict(zip(incoming["from"], incoming["weight"])) == pytest.approx(
        {a: d["weight"] for a, _, d in expected.in_edges(node, data=True)}, abs=1e-6)  # fmt: skip
    lens = next(df.value for df in app.dataframe if list(df.value.columns) == ["token", "probability"])
    run = fresh[family]
    references, _ = reference_lens(folders[family], run.source_tokens.tolist(), run.decoder_tokens.tolist())
    node_id = NodeId.parse(node)
    probabilities = torch.softmax(references[(node_id.kind, node_id.layer)][node_id.position].double(), -1)
    top = torch.topk(probabilities, 10)
    assert lens["token"].tolist() == [display_token(t) for t in run.model.decode_tokens(top.indices.tolist())]
    assert lens["probability"].tolist() == pytest.approx(top.values.tolist(), abs=1e-5)
    select(app, u)  # the encoder's final state: no lens, and why
    assert NO_LENS in " ".join(c.value for c in app.caption)
    assert not any(list(df.value.columns) == ["token", "probability"] for df in app.dataframe)


def test_page_switch_and_back_keeps_position_threshold_and_selection(config, monkeypatch):
    app = explorer(config, monkeypatch, "marian")
    app.select_slider(key=widget_key("route.position")).set_value(2).run()
    app.slider(key=widget_key("route.threshold")).set_value(0.03).run()
    graph = drawn(check(app))
    edge = "->".join(crosses(graph)[0])
    select(app, edge)
    for page in ("attention", "attribution", "explorer"):
        goto(app, page)
        check(app)
    route = state(app).route
    assert (route.position, route.threshold, route.selected) == (2, 0.03, edge)
    assert app.select_slider(key=widget_key("route.position")).value == 2
    assert app.selectbox(key=widget_key("route.selected")).value == edge
    assert any(df.value.columns.tolist() == ["head", "contribution"] for df in app.dataframe)


def test_a_link_reproduces_position_threshold_and_selection(config, monkeypatch):
    app = explorer(config, monkeypatch, "t5")
    app.select_slider(key=widget_key("route.position")).set_value(2).run()
    app.slider(key=widget_key("route.threshold")).set_value(0.05).run()
    edge = "->".join(crosses(drawn(check(app)))[0])
    select(app, edge)
    params = link_from_state(state(app), load_config(config))
    assert (params["token"], params["threshold"], params["sel"]) == ("2", "0.05", edge)
    reopened = start(config, monkeypatch, params)
    check(reopened)
    route = state(reopened).route
    assert (route.position, route.threshold, route.selected) == (2, 0.05, edge)
    assert_same_route(drawn(reopened), drawn(app))


def test_a_link_position_out_of_range_gives_one_message(config, fresh, monkeypatch):
    app = start(config, monkeypatch, {"model": "tiny-marian", "target": TARGET, "token": "99"})
    check(app)
    n = fresh["marian"].n_decoder
    messages = [w.value for w in app.warning]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"Decoder position 99 is out of range for this pair") and f"0–{n - 1}" in messages[0]
    assert state(app).route.position == default_decoder_position(fresh["marian"])


def test_the_exports_hold_the_route(config, fresh, monkeypatch):
    seen = record_downloads(monkeypatch)
    app = explorer(config, monkeypatch, "marian")
    graph = drawn(app)
    files = download_files(app, seen)
    name, make = files["Edges as CSV"]
    assert name.endswith("-edges.csv")
    table = pd.read_csv(io.BytesIO(make().encode() if isinstance(make(), str) else make()))
    assert len(table) == graph.number_of_edges()
    cross = table[table["kind"] == "cross"]
    heads = [c for c in table.columns if c.startswith("head_")]
    for row in cross.itertuples():
        assert [getattr(row, h) for h in heads] == pytest.approx(graph.edges[row.source, row.dest]["heads"], abs=1e-9)
    name, make = files["Graph as JSON (node-link)"]
    data = json.loads(make())
    assert {n["id"] for n in data["nodes"]} == set(graph.nodes) and data["graph"]["encoder_decoder"] is True
    # what the file says was explained: the model as the page names it, the texts as typed, the settings
    settings = data["graph"]
    assert (settings["model"], settings["source_text"], settings["target_text"]) == ("tiny-marian", SOURCE, TARGET)
    assert (settings["threshold"], settings["renormalize"], settings["parallel"]) == (0.04, True, False)


def test_each_target_token_of_an_attribution_opens_its_route(config, fresh, monkeypatch):
    app = start(config, monkeypatch, {"model": "tiny-marian", "target": TARGET, "attr_method": "attention"})
    check(goto(app, "attribution"))
    app.button(key="attribution_explore_3_button").click().run()
    check(app)
    assert state(app).route.position == 3 and state(app).route.selected is None  # decoder position 3 predicts target token 3
    assert app.select_slider(key=widget_key("route.position")).value == 3
    assert_same_route(drawn(app), llm_flow.seq2seq_route(fresh["marian"], 3, 0.04, True))

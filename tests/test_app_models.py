"""The app on an encoder and on a mixture of experts: the [MASK] token is explained first, and
an FFN node of a mixture of experts is split by expert (issue 20, items 1 and 3)."""

from __future__ import annotations

import json

import pytest

from llm_flow.views.neurons import expert_label, expert_shares, top_neurons
from tests.app_helpers import active_run, start, state, widget_key
from tests.test_app import inspect
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-models")
    models = {name: {"source": str(save_tiny_model(name, root / name))} for name in ("bert", "mixtral")}
    (root / "prompts.json").write_text(json.dumps(["The capital of France is [MASK]. Paris is big."]))
    path = root / "local.json"
    path.write_text(json.dumps({"default_model": "bert", "models": models, "prompts_file": "prompts.json"}))
    return path


def test_an_encoder_opens_on_its_mask_token(config, monkeypatch):
    app = start(config, monkeypatch)
    run = active_run(app)
    mask = run.str_tokens.index("[MASK]")
    assert state(app).route.position == mask
    assert any(h.value == "Predicted at '[MASK]'" for h in app.subheader)
    assert not app.error


def test_an_ffn_node_of_a_mixture_of_experts_is_split_by_expert(config, monkeypatch):
    app = start(config, monkeypatch, {"model": "mixtral"})
    run = active_run(app)
    assert run.model.info.n_experts == 4
    node = inspect(app, lambda o: o.startswith("M"))
    layer, position = (int(part) for part in node[1:].split("_"))
    experts = next(df.value for df in app.dataframe if "router weight" in df.value.columns)
    shares, _ = expert_shares(run, layer, position)
    assert list(experts["expert"]) == [expert_label(s.expert) for s in shares]
    neurons = next(df.value for df in app.dataframe if "expert" in df.value.columns and "neuron" in df.value.columns)
    assert list(neurons["neuron"]) == [n.neuron for n in top_neurons(run, layer, position, k=20)]
    app.selectbox(key=widget_key("explorer.expert")).select(shares[0].expert).run()
    assert not app.exception
    neurons = next(df.value for df in app.dataframe if list(df.value.columns) == ["neuron", "contribution", "activation"])
    assert list(neurons["neuron"]) == [n.neuron for n in top_neurons(run, layer, position, k=20, expert=shares[0].expert)]


@pytest.mark.parametrize("model", ["bert", "mixtral"])
def test_route_checks_are_offered_on_encoders_and_faithfulness_only_on_decoders(config, monkeypatch, model):
    """Route checks and edge removal work on both; the faithfulness check reads a decoder's
    causal edges, so on an encoder the Explorer says why instead of offering it."""
    app = start(config, monkeypatch, {"model": model})
    inspect(app, lambda o: "->" in o)  # an edge: its panel has the removal button
    buttons = {button.key for button in app.button}
    encoder = model == "bert"
    assert {"check_route_button", "check_edge_button"} <= buttons
    assert any("faithful" in expander.label for expander in app.expander) is not encoder
    said = any(c.value.startswith("No faithfulness check on this model: faithfulness checks score and ablate a decoder")
               for c in app.caption)  # fmt: skip
    assert said is encoder
    # nor edges scored by EAP-IG, which would only point at that check
    assert any(radio.label == "Score edges by" for radio in app.radio) is not encoder
    assert not app.exception and not app.error


def test_a_link_asking_for_eap_ig_edges_on_an_encoder_draws_the_alti_route(config, monkeypatch):
    """A link made on a decoder may carry *Score edges by: EAP-IG*; on an encoder there is no
    such measurement, so the route is drawn as ALTI scores it, with no note pointing elsewhere."""
    app = start(config, monkeypatch, {"model": "bert", "score_by": "eap-ig"})
    assert not any("Edges are scored by" in caption.value for caption in app.caption)
    assert app.get("plotly_chart") and not app.exception and not app.error


def test_an_encoders_mask_prediction_is_checked_then_other_pages_open(config, monkeypatch):
    """"Check this route" on the [MASK] token's route shows the library's check, and its threshold
    curve; removing an edge from a token after the [MASK] shows its removal; the other pages and
    the way back raise nothing."""
    import llm_flow
    from llm_flow.interventions import check_edge, check_route
    from llm_flow.wording import probability
    from tests.app_helpers import goto

    app = start(config, monkeypatch)
    run = active_run(app)
    mask = run.str_tokens.index("[MASK]")
    app.number_input(key=widget_key("check.draws")).set_value(3).run()
    next(b for b in app.button if b.label == "Check this route").click().run()
    assert not app.exception and not app.error
    graph = llm_flow.build_graph(run, mask, 0.04, True)
    expected = check_route(run, graph, draws=3, seed=0)
    shown = next(df.value for df in app.dataframe if "condition" in df.value.columns)
    assert list(shown["probability"]) == [probability(p) for p in expected.table()["probability"]]
    assert expected.position == mask and expected.token_id == int(run.logits[mask].argmax())
    next(b for b in app.button if b.label == "Threshold curve").click().run()
    assert not app.exception and not app.error
    curve = next(df.value for df in app.dataframe if "threshold" in df.value.columns)
    assert curve["probability"].between(0, 1).all() and curve["edges"].is_monotonic_decreasing

    later = next(f"{u}->{v}" for u, v, d in graph.edges(data=True)
                 if d["kind"] == "attention" and graph.nodes[u]["position"] > graph.nodes[v]["position"])  # fmt: skip
    inspect(app, lambda o: o == later)
    next(b for b in app.button if b.label == "Remove this edge").click().run()
    assert not app.exception and not app.error
    removal = check_edge(run, graph, *later.split("->"))
    assert any(m.value == probability(removal.removed.probability) for m in app.metric)
    for page in ("attention", "attribution", "guide", "explorer"):
        goto(app, page)
        assert not app.exception and not app.error, page


def test_the_attribution_page_explains_the_mask_of_an_encoder(config, monkeypatch):
    import numpy as np

    from llm_flow.attribution import attribute_sequence, prepare
    from llm_flow.ui import attribution as page
    from tests.app_helpers import goto

    app = goto(start(config, monkeypatch), "attribution")
    assert not app.exception and not app.error
    run = active_run(app)
    mask = run.str_tokens.index("[MASK]")
    shown = app.session_state[page.CACHE][state(app).attribution.shown]
    sequence = prepare(run.model, run.prompt)
    assert shown.position == mask == sequence.position
    assert shown.token_ids[-1] == int(run.logits[mask].argmax())  # the model's own prediction there
    expected = attribute_sequence(run.model, sequence, "integrated_gradients", n_steps=32, baseline="zeros")
    np.testing.assert_allclose(shown.scores, expected.scores, rtol=1e-5, atol=1e-7)
    assert app.pills(key=widget_key("attribution.step")).label == "Explained token"
    app.segmented_control(key=widget_key("attribution.method")).set_value("occlusion").run()
    assert not app.exception and not app.error
    shown = app.session_state[page.CACHE][state(app).attribution.shown]
    assert shown.method == "occlusion" and shown.options["baseline"] == "mask"
    app.segmented_control(key=widget_key("attribution.source")).set_value("Type").run()
    app.text_input(key=widget_key("attribution.continuation")).set_value("paris").run()
    assert not app.exception and not app.error
    shown = app.session_state[page.CACHE][state(app).attribution.shown]
    assert shown.targets == ["paris"]
    app.button(key="attribution_explore_0_button").click().run()
    assert not app.exception
    assert state(app).source.active.prompt == run.prompt and state(app).route.position == mask


def test_an_encoder_decoder_opens_on_its_route_in_the_explorer(tmp_path, monkeypatch):
    """Choosing an encoder–decoder opens the Explorer on the route of the decoder position that
    predicts the target's last word, across both stacks, with no traceback
    (tests/test_app_seq2seq_explorer.py checks the route itself)."""
    folder = save_tiny_model("marian", tmp_path / "marian")
    (tmp_path / "prompts.json").write_text(json.dumps(["The capital of France is Paris."]))
    path = tmp_path / "local.json"
    path.write_text(json.dumps({"default_model": "marian", "models": {"marian": {"source": str(folder)}},
                                "prompts_file": "prompts.json"}))  # fmt: skip
    app = start(path, monkeypatch)
    assert not app.exception and not app.error
    position = state(app).route.position
    assert f"edges for decoder position {position} " in " ".join(c.value for c in app.caption)
    assert app.slider(key=widget_key("route.threshold")).value == 0.04  # the route settings are in the sidebar

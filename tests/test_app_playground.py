"""The playground page in AppTest: sampling controls redraw from the Run's logits without a
forward pass, Step / Generate / Undo move the active text, a generated token opens in the Explorer."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llm_flow.models.bridge import BridgeLlm
from llm_flow.ui import playground as page
from tests.app_helpers import active_run, goto, start, state, widget_key
from tests.test_generation import plain_generate, plain_model


@pytest.fixture
def app(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    return goto(app, "playground")


@pytest.fixture
def forward_passes(monkeypatch) -> list[str]:
    """Every prompt the app runs the model on from now on."""
    calls: list[str] = []
    original = BridgeLlm.run

    def counting(self, prompt):
        calls.append(prompt)
        return original(self, prompt)

    monkeypatch.setattr(BridgeLlm, "run", counting)
    return calls


def button(app, key):
    return next(b for b in app.button if b.key == key)


def stage_bars(app) -> dict[str, dict[int, float]]:
    """The stage figure's panels: subplot title -> {token id: bar length}."""
    chart = next(c for c in app.get("plotly_chart") if "playground_stages_chart" in c.proto.id)
    spec = json.loads(chart.proto.spec)
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    return {title: dict(zip(trace["customdata"], trace["x"])) for title, trace in zip(titles, spec["data"])}


def history(app) -> list:
    return state(app).playground.history


def test_controls_change_the_distribution_without_running_the_model(app, forward_passes):
    run = active_run(app)
    logits = run.logits[-1][None]
    app.slider(key=widget_key("playground.temperature")).set_value(0.7).run()
    app.number_input(key=widget_key("playground.top_k")).set_value(5).run()
    app.slider(key=widget_key("playground.top_p")).set_value(0.6).run()
    # transformers' own warpers on the Run's logits, in generate's order
    warped = TopPLogitsWarper(0.6)(None, TopKLogitsWarper(5)(None, TemperatureLogitsWarper(0.7)(None, logits)))
    expected = torch.softmax(warped, -1)[0]
    bars = stage_bars(app)
    final = bars["top-p 0.6"]
    assert list(bars) == ["logits", "softmax(logits / 0.7)", "top-k 5", "top-p 0.6"]
    kept = [t for t in torch.topk(run.logits[-1], 15).indices.tolist() if expected[t] > 0]
    assert kept and [final[t] for t in kept] == pytest.approx([float(expected[t]) for t in kept], abs=1e-6)
    n_kept = int((expected > 0).sum())
    assert any(f"{n_kept} token{'s' if n_kept > 1 else ''} of" in c.value for c in app.caption)
    app.slider(key=widget_key("playground.temperature")).set_value(0.0).run()
    assert list(stage_bars(app))[1] == "temperature 0: greedy"
    assert any("1 token of" in c.value for c in app.caption)
    assert forward_passes == [], "a sampling control ran the model"
    assert not app.exception


def test_step_generate_and_undo_move_the_active_text(app, tiny_folders):
    app.slider(key=widget_key("playground.temperature")).set_value(0.0).run()
    first = active_run(app)
    button(app, page.STEP).click().run()
    assert not app.exception and not app.error
    second = active_run(app)
    (entry,) = history(app)
    token = entry.generation.tokens[0]
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_folders["llama"])).eval()  # the config's default model
    with torch.no_grad():
        expected = int(plain(first.tokens[None]).logits[0, -1].argmax())
    assert token.token_id == expected and token.position == first.n_tokens
    assert second.prompt == first.prompt + entry.generation.continuation and second.prompt != first.prompt
    assert state(app).source.active.prompt == second.prompt

    app.number_input(key=widget_key("playground.count")).set_value(3).run()
    button(app, page.GENERATE).click().run()
    assert len(history(app)) == 2 and len(history(app)[-1].generation.tokens) == 3
    generated = [t.token_id for t in history(app)[-1].generation.tokens]
    assert generated == plain_generate(plain, second.tokens.tolist(), 3, do_sample=False)
    third = active_run(app)
    assert third.prompt.startswith(second.prompt) and len(third.prompt) > len(second.prompt)
    assert len(app.pills(key=page.TOKENS).options) == 4

    button(app, page.UNDO).click().run()
    assert active_run(app).prompt == second.prompt and len(history(app)) == 1
    button(app, page.UNDO).click().run()
    assert active_run(app).prompt == first.prompt and history(app) == []
    assert button(app, page.UNDO).disabled


def test_seeded_steps_repeat_and_undo_restores_the_draw(app):
    app.slider(key=widget_key("playground.temperature")).set_value(1.5).run()
    app.number_input(key=widget_key("playground.seed")).set_value(7).run()
    button(app, page.STEP).click().run()
    drawn = history(app)[0].generation.tokens[0].token_id
    button(app, page.UNDO).click().run()
    button(app, page.STEP).click().run()
    assert history(app)[0].generation.tokens[0].token_id == drawn


def test_a_generated_token_opens_in_the_explorer(app):
    app.slider(key=widget_key("playground.temperature")).set_value(0.0).run()
    prompt_tokens = active_run(app).n_tokens
    button(app, page.STEP).click().run()
    run = active_run(app)
    assert app.pills(key=page.TOKENS).options
    app.pills(key=page.TOKENS).set_value(0).run()
    assert not app.exception
    # The Explorer now explains the position that predicted the generated token.
    assert state(app).route.position == prompt_tokens - 1
    captions = " ".join(c.value for c in app.caption)
    assert f"edges for token {prompt_tokens - 1}" in captions
    assert state(app).source.active.prompt == run.prompt


def test_anatomy_shows_the_explained_token(app):
    run = active_run(app)
    app.select_slider(key=widget_key("route.position")).set_value(2).run()
    caption = next(c.value for c in app.caption if c.value.startswith("At 2:"))
    assert page.display_token(run.str_tokens[3]) in caption
    table = next(df.value for df in app.dataframe if "lens top token" in df.value.columns)
    assert len(table) == run.n_layers + 1
    app.radio(key=widget_key("playground.explain")).set_value("top").run()
    table = next(df.value for df in app.dataframe if "lens top token" in df.value.columns)
    assert table.iloc[-1, -1] == 1  # the top prediction has rank 1 after the last layer


def test_the_page_keeps_no_run_alive(app):
    """History, generator and memos hold ids and numbers, not Runs: once the shared cache lets a
    Run go, it is freed, and the page rebuilds it when it is needed again."""
    import gc
    import weakref

    from llm_flow.ui.resources import cached_runs

    button(app, page.STEP).click().run()
    app.slider(key=widget_key("playground.top_p")).set_value(0.8).run()  # a fragment run
    seen = weakref.ref(active_run(app))
    cached_runs().clear()
    gc.collect()
    assert seen() is None
    app.slider(key=widget_key("playground.top_p")).set_value(0.7).run()
    assert not app.exception and any("can be drawn" in c.value for c in app.caption)


def test_a_link_reopens_the_generated_tokens_by_their_ids(app, tiny_config, tiny_folders, monkeypatch):
    app.slider(key=widget_key("playground.temperature")).set_value(0.0).run()
    button(app, page.STEP).click().run()
    goto(app, "playground")
    button(app, page.STEP).click().run()
    goto(app, "playground")
    ids = [t.token_id for entry in history(app) for t in entry.generation.tokens]
    link = {k: v[0] if isinstance(v, list) else v for k, v in dict(app.query_params).items()}
    assert link["play_ids"] == ",".join(map(str, ids)) and link["play_temp"] == "0.0"

    other = goto(start(tiny_config, monkeypatch, params=link), "playground")
    restored = history(other)
    assert len(restored) == 1 and [t.token_id for t in restored[0].generation.tokens] == ids
    assert len(other.pills(key=page.TOKENS).options) == len(ids)
    assert any("Reopened from a link" in i.value for i in other.info)
    run = active_run(other)
    plain = plain_model(tiny_folders["llama"])  # the model's own probabilities, from plain transformers
    with torch.no_grad():
        probs = torch.softmax(plain(run.tokens[None]).logits[0].double(), -1)
    for token in restored[0].generation.tokens:
        assert token.model_probability == pytest.approx(float(probs[token.position - 1, token.token_id]), rel=1e-4)
        assert token.rank == int((probs[token.position - 1] > probs[token.position - 1, token.token_id]).sum())


def test_a_link_whose_ids_do_not_end_its_text_says_so(tiny_config, monkeypatch):
    other = goto(start(tiny_config, monkeypatch, params={"play_ids": "5,6,7"}), "playground")
    assert any("not the last tokens of its text" in w.value for w in other.warning)
    assert not history(other) and "play_ids" not in dict(other.query_params)

"""The frame around the pages: state that survives page switches, permalinks in and out, and
the stuck or lost states a new user met (issue: hardening)."""

from __future__ import annotations

import copy
import json

import pytest

from llm_flow.config import load_config
from llm_flow.ui.analysis import Request
from llm_flow.ui.permalink import link_from_state, linked_fields, state_from_link
from llm_flow.ui.resources import ModelKey
from llm_flow.ui.state import WIDGET_PREFIX, SessionState
from tests.app_helpers import active_run, goto, start, state, widget_key
from tests.conftest import REPO


def caption_text(app) -> str:
    return " ".join(c.value for c in app.caption)


def choose_element(app, predicate) -> str:
    options = app.selectbox(key=widget_key("route.selected")).options
    ids = [label.split(" · ")[0].replace(" → ", "->") for label in options]
    choice = next(i for i in ids if predicate(i))
    app.selectbox(key=widget_key("route.selected")).select(choice).run()
    return choice


def test_a_page_round_trip_keeps_every_setting(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    app.selectbox(key=widget_key("source.model_choice")).select("tiny-gpt2").run()
    app.selectbox(key=widget_key("source.prompt_choice")).select("One, two, three,").run()
    app.select_slider(key=widget_key("route.position")).set_value(3).run()
    app.slider(key=widget_key("route.threshold")).set_value(0.02).run()
    app.checkbox(key=widget_key("route.renormalize")).uncheck().run()
    app.toggle(key=widget_key("explorer.compact")).set_value(True).run()
    app.number_input(key=widget_key("explorer.temperature")).set_value(0.5).run()
    choose_element(app, lambda e: e.startswith("M"))
    app.slider(key=widget_key("explorer.neuron_count")).set_value(9).run()
    before = copy.deepcopy((state(app).source.active, state(app).route, state(app).explorer))

    goto(app, "guide")
    assert any("How to read llm-flow" in t.value for t in app.title)
    app.run()  # a second run on the other page: Streamlit drops unrendered widgets' state here
    goto(app, "explorer")

    assert (state(app).source.active, state(app).route, state(app).explorer) == before
    assert app.select_slider(key=widget_key("route.position")).value == 3
    assert app.slider(key=widget_key("route.threshold")).value == 0.02
    assert "for token 3" in caption_text(app)
    assert len(next(df.value for df in app.dataframe if "neuron" in df.value.columns)) == 9


def test_the_url_follows_the_view_and_reopens_it_in_a_new_session(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    app.selectbox(key=widget_key("source.prompt_choice")).select("One, two, three,").run()
    app.select_slider(key=widget_key("route.position")).set_value(2).run()
    app.slider(key=widget_key("route.threshold")).set_value(0.1).run()
    element = choose_element(app, lambda e: "->" in e)
    link = {k: v[0] if isinstance(v, list) else v for k, v in dict(app.query_params).items()}
    expected = {"model": "tiny-llama", "prompt": "1", "token": "2", "threshold": "0.1", "sel": element}
    assert {k: link[k] for k in expected} == expected
    assert set(link) - set(expected) <= {"head"}, "only settings that differ from their defaults"

    other = start(tiny_config, monkeypatch, params=link)
    assert state(other).source.active == state(app).source.active
    assert state(other).route == state(app).route and state(other).explorer == state(app).explorer
    assert caption_text(other) == caption_text(app)
    assert not other.warning and not other.error


def test_every_page_setting_travels_in_a_link(tiny_config, monkeypatch):
    """A link reopens each page's own settings: Attention, Attribution, Playground, Dataset."""
    params = {"att_view": "model", "att_weight": "norm", "att_layer": "1", "att_head": "1", "att_window": "3",
              "attr_method": "saliency", "attr_foil": " Rome", "attr_generate": "2",
              "play_temp": "0.5", "play_top_k": "7", "play_seed": "3", "data_folder": "results/x",
              "check_draws": "5", "temp": "2.5", "neurons": "30"}  # fmt: skip
    app = start(tiny_config, monkeypatch, params=params)
    session = state(app)
    assert (session.attention.view, session.attention.weighting, session.attention.layer, session.attention.head,
            session.attention.window) == ("model", "norm", 1, 1, 3)  # fmt: skip
    assert (session.attribution.method, session.attribution.foil, session.attribution.generate) == ("saliency", " Rome", 2)
    assert (session.playground.temperature, session.playground.top_k, session.playground.seed) == (0.5, 7, 3)
    assert (session.dataset.folder, session.check.draws, session.explorer.temperature) == ("results/x", 5, 2.5)
    goto(app, "attention")
    assert app.radio(key=widget_key("attention.view")).value == "model"
    link = dict(app.query_params)
    assert all(link[name] == value for name, value in params.items()), "the URL keeps every setting"


@pytest.mark.parametrize(
    "params,notice",
    [
        ({"model": "no-such-model"}, "Unknown model 'no-such-model'"),
        ({"token": "99"}, "Token 99 is out of range"),
        ({"token": "three"}, "token 'three' is not a token position"),
        ({"token": "-3"}, "token '-3' is not a token position (0, 1, 2 …); explaining the last token"),
        ({"threshold": "7"}, "the threshold must be a number from 0.001 to 0.5 (got '7')"),
        ({"threshold": "nan"}, "the threshold must be a number from 0.001 to 0.5 (got 'nan')"),
        ({"prompt": "12"}, "asks for prompt 12, but 2 prompts are configured"),
        ({"renorm": "maybe"}, "renorm 'maybe' is not 1 or 0"),
        ({"att_view": "sideways"}, "att_view 'sideways' is not one of 'head', 'model', 'neuron'"),
        ({"play_top_p": "3"}, "play_top_p '3' is not a number from 0 to 1"),
        ({"sel": "Q9_9"}, "'Q9_9', which is not a node or edge name"),
        ({"sel": "A0_0->I2_0"}, "is not on this route"),
        ({"zoom": "3"}, "parameter 'zoom' is not one llm-flow knows"),
    ],
)
def test_a_bad_link_opens_with_a_message_and_the_defaults(tiny_config, monkeypatch, params, notice):
    app = start(tiny_config, monkeypatch, params=params)
    messages = [m.value for m in (*app.warning, *app.error)]
    assert any(notice in m for m in messages), messages
    config = load_config(tiny_config)
    active = state(app).source.active
    assert active.model.source == config.default_model and active.prompt == config.prompts[0]
    assert state(app).route.threshold == 0.04 and state(app).route.renormalize is True
    assert "nodes" in caption_text(app), "the default analysis is on screen"


@pytest.mark.parametrize(
    "params,page,notice",
    [
        ({"att_layer": "99"}, "attention", "Layer 99 does not exist"),
        ({"attr_method": "magic"}, "attribution", "There is no attribution method 'magic'"),
        ({"data_folder": "/no/such/folder"}, "dataset", "/no/such/folder"),
    ],
)
def test_a_link_value_that_does_not_fit_the_model_is_said_on_its_page(tiny_config, monkeypatch, params, page, notice):
    app = goto(start(tiny_config, monkeypatch, params=params), page)
    messages = [m.value for m in (*app.warning, *app.error)]
    assert any(notice in m for m in messages), messages


def test_reading_a_link_is_total_over_garbage(tiny_config):
    config = load_config(tiny_config)
    garbage = ("", "-0", "nan", "->", "-1", "1e999", ",,", "x,1", "\x00")
    for name in [*(spec.param for *_, spec in linked_fields()), "sel", "text", "model", "prompt", "token"]:
        for value in garbage:
            state_from_link({name: value}, config)  # never raises


def _non_default(spec) -> object:
    """A valid value other than the default, for every kind of linked field."""
    if spec.choices:
        return next(c for c in spec.choices if c != spec.default)
    if spec.kind is bool:
        return not spec.default
    if spec.kind is int:
        return int(spec.low or 0) + 1 if spec.default != int(spec.low or 0) + 1 else int(spec.low or 0) + 2
    if spec.kind is float:
        return (spec.low + spec.high) / 3 if spec.high is not None else 0.3
    if spec.kind is tuple:
        return (0, 2)
    return "some text"


def test_links_are_a_pure_function_of_the_state_both_ways(tiny_config):
    """state -> URL -> state gives the same state, for every linked field of every page."""
    config = load_config(tiny_config)
    state_in = SessionState.initial(config)
    state_in.source.active = Request(ModelKey("tiny-gpt2", "cpu", "float32", str(tiny_config)), "typed text")
    state_in.route.position, state_in.route.selected = 3, "A1_2"
    for section, name, spec in linked_fields():
        setattr(getattr(state_in, section), name, _non_default(spec))
    params = link_from_state(state_in, config)
    assert len(params) == len(linked_fields()) + 4, "every setting that differs from its default is written"
    state_out, notices = state_from_link(params, config)
    assert notices == []
    for section, name, _ in linked_fields():
        assert getattr(getattr(state_out, section), name) == getattr(getattr(state_in, section), name), (section, name)
    assert (state_out.source.model_choice, state_out.source.pending_prompt) == ("tiny-gpt2", "typed text")
    assert (state_out.source.pending_position, state_out.source.pending_selected) == (3, "A1_2")
    assert link_from_state(SessionState.initial(config), config) == {}, "no analysis yet, no link"


def test_a_value_outside_what_a_link_may_ask_is_reported_and_not_used(tiny_config):
    config = load_config(tiny_config)
    for section, name, spec in linked_fields():
        if spec.kind is str and not spec.choices:
            continue  # free text: anything goes (checked against the model or registry by its page)
        bad = "99999999999" if spec.high is not None else ("-5" if spec.low is not None else "not-a-value")
        if spec.kind is bool or spec.choices:
            bad = "not-a-value"
        state_out, notices = state_from_link({spec.param: bad}, config)
        assert getattr(getattr(state_out, section), name) == spec.default, spec.param
        assert len(notices) == 1 and spec.param in notices[0] or "threshold" in notices[0], (spec.param, notices)


# --- issue "Hardening": stuck or lost states -----------------------------------------------------


def analyse(app, text: str) -> None:
    app.text_area(key=widget_key("source.new_prompt")).input(text)
    next(b for b in app.button if b.label == "Analyse new prompt").click().run()


def test_a_refused_prompt_submitted_again_says_why_again_and_the_list_still_drives(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    analyse(app, "Paris " * 100)
    assert any("configured limit" in e.value for e in app.error)
    next(b for b in app.button if b.label == "Analyse new prompt").click().run()
    assert any("configured limit" in e.value for e in app.error), "the repeated request is answered"
    app.selectbox(key=widget_key("source.prompt_choice")).select("One, two, three,").run()
    assert state(app).source.active.prompt == "One, two, three,", "the Prompt list drives the analysis"
    assert not app.error
    app.selectbox(key=widget_key("source.prompt_choice")).select("The capital of France is").run()
    assert state(app).source.active.prompt == "The capital of France is"


def test_a_model_path_that_failed_is_tried_again_when_asked(tiny_config, tiny_folders, tmp_path, monkeypatch):
    import shutil

    app = start(tiny_config, monkeypatch)
    later = tmp_path / "arrives-later"
    app.text_input(key=widget_key("source.custom_model_input")).input(str(later))
    next(b for b in app.button if b.label == "Load model").click().run()
    assert any("Unknown model" in e.value for e in app.error)
    shutil.copytree(tiny_folders["gpt2"], later)
    next(b for b in app.button if b.label == "Load model").click().run()
    assert not app.error
    assert state(app).source.active.model.source == str(later)


def test_no_empty_progress_box_stays_after_a_refusal(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    analyse(app, "Paris " * 100)
    assert [s.label for s in app.status] == []  # st.status blocks (expanders with a state)
    assert not [e for e in app.expander if "Analysing" in (e.label or "")]


@pytest.mark.parametrize("limit", [64, 1])
def test_a_refusal_reads_as_a_sentence_whose_counts_agree(tiny_config, tiny_folders, tmp_path, monkeypatch, limit):
    """What the user reads after a prompt over the limit, word for word, with the count taken
    from the tokenizer itself. Limit 64: a long typed prompt; limit 1 (the singular, "1 token"):
    already the configured prompt the app opens on."""
    import json

    from transformers import AutoTokenizer

    config = json.loads(tiny_config.read_text())
    config["limits"]["max_prompt_tokens"] = limit
    config["prompts_file"] = str(tiny_config.parent / "prompts.json")
    path = tmp_path / "limit.json"
    path.write_text(json.dumps(config))
    app = start(path, monkeypatch)
    text = load_config(path).prompts[0]
    if limit > 1:
        text = "Paris " * 100
        analyse(app, text)
    n_tokens = len(AutoTokenizer.from_pretrained(str(tiny_folders["llama"]))(text)["input_ids"])
    noun = "token" if limit == 1 else "tokens"
    expected = (f"The prompt is {n_tokens} tokens long, over the configured limit (limits.max_prompt_tokens) "
                f"of {limit} {noun}: shorten it.")  # fmt: skip
    assert any(e.value.startswith(expected) for e in app.error), [e.value for e in app.error]


@pytest.mark.real_model
def test_the_shipped_app_refuses_a_prompt_over_smollm2s_context(smollm2, monkeypatch):
    """The shipped limit is SmolLM2's own context (8,192 tokens): a longer prompt is refused with
    the sentence, before any forward pass; the previous analysis stays active."""
    app = start(REPO / "config" / "local.json", monkeypatch)
    before = state(app).source.active
    text = "Paris " * 8300
    n_tokens = len(smollm2.tokenizer(text)["input_ids"])
    assert n_tokens > 8192
    analyse(app, text)
    expected = (f"The prompt is {n_tokens:,} tokens long, over the configured limit (limits.max_prompt_tokens) "
                "of 8,192 tokens: shorten it.")  # fmt: skip
    assert any(e.value.startswith(expected) for e in app.error), [e.value for e in app.error]
    assert state(app).source.active == before


def test_the_diagonal_attention_edge_shows_the_residual_and_heads_split(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    run = active_run(app)
    last = run.n_tokens - 1
    element = choose_element(app, lambda e: e.endswith(f"->A{run.n_layers - 1}_{last}") and e.split("->")[0].endswith(f"_{last}"))
    import llm_flow

    graph = llm_flow.build_graph(run, -1, 0.04, True)
    data = graph.edges[tuple(element.split("->"))]
    text = caption_text(app)
    assert f"weight {data['weight']:.3f}" in text
    assert f"residual stream {data['residual']:.3f} + attention heads {data['weight'] - data['residual']:.3f}" in text


def test_the_first_screen_is_drawn_before_the_model_libraries_load():
    """A cold start spends seconds importing torch and transformers: the page must show that
    llm-flow is starting before it imports them, never a blank page. Checked by what a session
    sees when those imports cannot even begin (a fresh process where they fail at once)."""
    import json
    import subprocess
    import sys

    probe = f"""
import json, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "transformer_lens"):
            raise ImportError("blocked by the test: " + name)
sys.meta_path.insert(0, Blocked())
from streamlit.testing.v1 import AppTest
app = AppTest.from_file({str(REPO / "app.py")!r}, default_timeout=120).run()
print(json.dumps({{"captions": [c.value for c in app.caption],
                   "errors": [e.message for e in app.exception]}}))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert any("blocked by the test" in message for message in seen["errors"]), seen
    assert seen["captions"] == ["Starting llm-flow…"], seen


def test_find_a_node_selects_it_and_centres_the_graph(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    run = active_run(app)
    last = run.n_tokens - 1
    app.text_input(key=widget_key("explorer.find")).input(f"A1_{last}").run()
    assert state(app).route.selected == f"A1_{last}" and state(app).explorer.focus == f"A1_{last}"
    spec = json.loads(next(c for c in app.get("plotly_chart") if "explorer_route_chart" in c.proto.id).proto.spec)
    x_range, y_range = spec["layout"]["xaxis"]["range"], spec["layout"]["yaxis"]["range"]
    x, y = next((t["x"][i], t["y"][i]) for t in spec["data"] if t.get("customdata")
                for i, c in enumerate(t["customdata"]) if c == f"A1_{last}")  # fmt: skip
    assert x_range[0] < x < x_range[1] and y_range[0] < y < y_range[1], "the found node is in view"
    xs = [v for t in spec["data"] for v in (t.get("x") or []) if isinstance(v, (int, float))]
    assert x_range[1] - x_range[0] < max(xs) - min(xs) + 1, "and the view is zoomed on it"
    assert "find" in dict(app.query_params) and dict(app.query_params)["focus"] in (f"A1_{last}", [f"A1_{last}"])

    app.text_input(key=widget_key("explorer.find")).input("L99").run()
    assert any("L99" in m.value or "layer" in m.value.lower() for m in (*app.error, *app.warning))
    assert not app.exception
    app.text_input(key=widget_key("explorer.find")).input("").run()
    assert state(app).explorer.focus is None and "focus" not in dict(app.query_params)


def test_link_values_at_their_limits_and_in_other_spellings_are_read(tiny_config):
    """What a hand-edited or old link may hold: the first prompt and token 0, every bound itself,
    other spellings of yes and no, an empty optional value; and the fields' kinds as declared."""
    config = load_config(tiny_config)  # two prompts
    for params, read in [
        ({"prompt": "0"}, lambda s: s.source.prompt_choice == config.prompts[0]),
        ({"prompt": "1"}, lambda s: s.source.prompt_choice == config.prompts[1]),
        ({"token": "0"}, lambda s: s.source.pending_position == 0),
        ({"threshold": "0.001", "temp": "5.0"}, lambda s: (s.route.threshold, s.explorer.temperature) == (0.001, 5.0)),
        ({"check_draws": "1", "neurons": "100"}, lambda s: (s.check.draws, s.explorer.neuron_count) == (1, 100)),
        ({"renorm": "OFF", "lens_norm": "False", "check": "Yes"},
         lambda s: (s.route.renormalize, s.explorer.lens_normalize, s.check.shown) == (False, False, True)),
        ({"att_layers": "", "compact": ""}, lambda s: (s.attention.layers, s.explorer.compact) == (None, None)),
    ]:  # fmt: skip
        state_out, notices = state_from_link(params, config)
        assert notices == [] and read(state_out), params
    state_out, notices = state_from_link({"prompt": "2"}, config)
    assert notices == ["The link asks for prompt 2, but 2 prompts are configured (0–1); showing the first."]
    state_out, notices = state_from_link({"att_layers": "1,-2"}, config)
    assert state_out.attention.layers is None and notices == [
        "The link's att_layers '1,-2' is not a list of numbers from 0; the default (none) is used."
    ]
    kinds = {(section, name): (spec.kind, spec.optional) for section, name, spec in linked_fields.__wrapped__()}
    assert kinds[("attention", "heads")] == (tuple, True) and kinds[("explorer", "compact")] == (bool, True)
    assert kinds[("route", "threshold")] == (float, False) and kinds[("explorer", "head")] == (int, True)

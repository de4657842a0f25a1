"""The frame around the pages: state that survives page switches, permalinks in and out, and
the stuck or lost states a new user met (issue: hardening)."""

from __future__ import annotations

from pathlib import Path

import pytest

import llm_flow.ui.app as app_module
from llm_flow.config import load_config
from llm_flow.ui import keys
from llm_flow.ui.permalink import read_link, write_link
from tests.app_helpers import active_run, goto, start


def caption_text(app) -> str:
    return " ".join(c.value for c in app.caption)


def choose_element(app, predicate) -> str:
    options = app.selectbox(key=keys.SELECTED).options
    ids = [label.split(" · ")[0].replace(" → ", "->") for label in options]
    choice = next(i for i in ids if predicate(i))
    app.selectbox(key=keys.SELECTED).select(choice).run()
    return choice


SETTINGS = (keys.MODEL_CHOICE, keys.PROMPT_CHOICE, keys.TARGET, keys.THRESHOLD, keys.RENORMALIZE,
            keys.SELECTED, keys.COMPACT, keys.NEURON_COUNT, keys.TEMPERATURE)  # fmt: skip


def test_a_page_round_trip_keeps_every_setting(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    app.selectbox(key=keys.MODEL_CHOICE).select("tiny-gpt2").run()
    app.selectbox(key=keys.PROMPT_CHOICE).select("One, two, three,").run()
    app.select_slider(key=keys.TARGET).set_value(3).run()
    app.slider(key=keys.THRESHOLD).set_value(0.02).run()
    app.checkbox(key=keys.RENORMALIZE).uncheck().run()
    app.toggle(key=keys.COMPACT).set_value(True).run()
    app.number_input(key=keys.TEMPERATURE).set_value(0.5).run()
    choose_element(app, lambda e: e.startswith("M"))
    app.slider(key=keys.NEURON_COUNT).set_value(9).run()
    before = {key: app.session_state[key] for key in SETTINGS}
    active = app.session_state[keys.ACTIVE]

    goto(app, "guide")
    assert any("How to read llm-flow" in t.value for t in app.title)
    app.run()  # a second run on the other page: Streamlit would drop unrendered widgets' state here
    goto(app, "explorer")

    assert {key: app.session_state[key] for key in SETTINGS} == before
    assert app.session_state[keys.ACTIVE] == active
    assert app.select_slider(key=keys.TARGET).value == 3
    assert "for token 3" in caption_text(app)
    assert len(next(df.value for df in app.dataframe if "neuron" in df.value.columns)) == 9


def test_the_url_follows_the_view_and_reopens_it_in_a_new_session(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    app.selectbox(key=keys.PROMPT_CHOICE).select("One, two, three,").run()
    app.select_slider(key=keys.TARGET).set_value(2).run()
    app.slider(key=keys.THRESHOLD).set_value(0.1).run()
    element = choose_element(app, lambda e: "->" in e)
    link = dict(app.query_params)
    link = {k: v[0] if isinstance(v, list) else v for k, v in link.items()}
    assert link == {"model": "tiny-llama", "prompt": "1", "token": "2", "threshold": "0.1", "renorm": "1", "sel": element}

    other = start(tiny_config, monkeypatch, params=link)
    assert other.session_state[keys.ACTIVE] == app.session_state[keys.ACTIVE]
    for key in (keys.TARGET, keys.THRESHOLD, keys.RENORMALIZE, keys.SELECTED):
        assert other.session_state[key] == app.session_state[key]
    assert caption_text(other) == caption_text(app)
    assert not other.warning and not other.error


def test_a_typed_prompt_travels_in_the_link_as_text(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch, params={"text": "Seven, eight, nine", "token": "-2"})
    run = active_run(app)
    assert run.prompt == "Seven, eight, nine" and app.session_state[keys.TARGET] == run.n_tokens - 2
    assert dict(app.query_params)["text"] in ("Seven, eight, nine", ["Seven, eight, nine"])


@pytest.mark.parametrize(
    "params,notice",
    [
        ({"model": "no-such-model"}, "Unknown model 'no-such-model'"),
        ({"token": "99"}, "Token 99 is out of range"),
        ({"token": "three"}, "token 'three' is not a whole number"),
        ({"threshold": "7"}, "threshold '7' is not a number from 0.005 to 0.2"),
        ({"threshold": "nan"}, "threshold 'nan' is not a number"),
        ({"prompt": "12"}, "asks for prompt 12, but 2 prompts are configured"),
        ({"renorm": "maybe"}, "renorm 'maybe' should be 1 or 0"),
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
    active = app.session_state[keys.ACTIVE]
    assert active.model.source == config.default_model and active.prompt == config.prompts[0]
    assert app.session_state[keys.THRESHOLD] == 0.04 and app.session_state[keys.RENORMALIZE] is True
    assert "nodes" in caption_text(app), "the default analysis is on screen"


def test_read_link_is_total_over_garbage(tiny_config):
    config = load_config(tiny_config)
    for params in ({"token": ""}, {"threshold": "-0"}, {"text": ""}, {"model": ""}, {"sel": "->"}, {"prompt": "-1"}):
        link = read_link(params, config)  # never raises
        assert link.threshold is None and link.token in (None, 0) and link.selected is None
    link = read_link(write_link(model="tiny-gpt2", prompt="typed", configured_prompts=config.prompts, token=3,
                                threshold=0.125, renormalize=False, selected="A1_2"), config)  # fmt: skip
    assert (link.model_choice, link.text, link.token, link.threshold, link.renormalize, link.selected) == (
        "tiny-gpt2", "typed", 3, 0.125, False, "A1_2")


# --- issue "Hardening": stuck or lost states -----------------------------------------------------


def analyse(app, text: str) -> None:
    app.text_area(key=keys.NEW_PROMPT).input(text)
    next(b for b in app.button if b.label == "Analyse new prompt").click().run()


def test_a_refused_prompt_submitted_again_says_why_again_and_the_list_still_drives(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    analyse(app, "Paris " * 100)
    assert any("configured limit" in e.value for e in app.error)
    next(b for b in app.button if b.label == "Analyse new prompt").click().run()
    assert any("configured limit" in e.value for e in app.error), "the repeated request is answered"
    app.selectbox(key=keys.PROMPT_CHOICE).select("One, two, three,").run()
    assert app.session_state[keys.ACTIVE].prompt == "One, two, three,", "the Prompt list drives the analysis"
    assert not app.error
    app.selectbox(key=keys.PROMPT_CHOICE).select("The capital of France is").run()
    assert app.session_state[keys.ACTIVE].prompt == "The capital of France is"


def test_a_model_path_that_failed_is_tried_again_when_asked(tiny_config, tiny_folders, tmp_path, monkeypatch):
    import shutil

    app = start(tiny_config, monkeypatch)
    later = tmp_path / "arrives-later"
    app.text_input(key=keys.CUSTOM_MODEL_INPUT).input(str(later))
    next(b for b in app.button if b.label == "Load model").click().run()
    assert any("Unknown model" in e.value for e in app.error)
    shutil.copytree(tiny_folders["gpt2"], later)
    next(b for b in app.button if b.label == "Load model").click().run()
    assert not app.error
    assert app.session_state[keys.ACTIVE].model.source == str(later)


def test_no_empty_progress_box_stays_after_a_refusal(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    analyse(app, "Paris " * 100)
    assert [s.label for s in app.status] == []  # st.status blocks (expanders with a state)
    assert not [e for e in app.expander if "Analysing" in (e.label or "")]


def test_messages_are_sentences_and_counts_agree(tiny_config, monkeypatch):
    app = start(tiny_config, monkeypatch)
    analyse(app, "Paris " * 100)
    message = next(e.value for e in app.error)
    assert message[0].isupper() and " 1 tokens" not in message
    from llm_flow.wording import plural

    assert plural(1, "token") == "1 token" and plural(1024, "token") == "1,024 tokens"


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
    """A cold start spends seconds importing torch and transformers: the app's entry point must
    draw its first element before it imports them, so the page is never blank."""
    import subprocess
    import sys

    probe = (
        "import sys; import llm_flow.ui.app as app; "
        "print(sorted(m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
    source = (Path(app_module.__file__)).read_text()
    assert source.index("Starting llm-flow") < source.index("from llm_flow.ui import frame")

"""The Dataset page with Streamlit's AppTest: load results folders, switch metrics, compare two
folders, pick a component, and open one of its prompts in the Explorer."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from llm_flow.dataset import ModelSpec, Settings, analyse_dataset
from llm_flow.dataset.results import component_grid, difference_grid, load_results, top_prompts
from llm_flow.ui import dataset as page
from tests.app_helpers import goto, start, state, widget_key

CODE = ["def add(a, b): return a + b", "for i in range(3): print(i)", "x = max(a, b)"]
PROSE = ["The capital of France is Paris.", "When Mary and John went to the store", "One, two, three, four"]


@pytest.fixture(scope="module")
def folders(tiny_config, tmp_path_factory):
    """Two results folders made with the config's default model (tiny-llama), one with tiny-gpt2."""
    root = tmp_path_factory.mktemp("dataset-results")
    spec = ModelSpec("tiny-llama", config_path=str(tiny_config))
    analyse_dataset(CODE, root / "code", spec, Settings("all"), progress=False)
    analyse_dataset(PROSE, root / "prose", spec, Settings("all"), progress=False)
    analyse_dataset(PROSE[:1], root / "gpt2", ModelSpec("tiny-gpt2", config_path=str(tiny_config)), progress=False)
    return root


def chart_figure(app) -> dict:
    chart = app.get("plotly_chart")[0]
    return json.loads(chart.proto.spec)


def values(data) -> list:
    """A figure array as a nested list; plotly writes numeric arrays as base64 typed arrays."""
    if isinstance(data, dict) and "bdata" in data:
        flat = np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
        shape = [int(n) for n in str(data.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).tolist()
    return data


def shown_prompts(app, index: int = 0) -> list[str]:
    return list(app.dataframe[index].value["prompt_id"])


def test_a_results_folder_shows_heatmaps_and_the_top_prompts_of_a_component(tiny_config, folders, monkeypatch):
    app = goto(start(tiny_config, monkeypatch), "dataset")
    assert any("Type the folder" in info.value for info in app.info)
    app.text_input(key=widget_key("dataset.folder")).set_value(str(folders / "missing")).run()
    assert any("no results folder at" in error.value for error in app.error)

    app.text_input(key=widget_key("dataset.folder")).set_value(str(folders / "code")).run()
    assert not app.exception and not app.error
    results = load_results(folders / "code")
    figure = chart_figure(app)
    heads, _, ffn, _ = figure["data"]
    assert values(heads["z"]) == component_grid(results, "frequency").heads.tolist()
    assert values(heads["customdata"])[1][2] == "L1.H2" and values(ffn["customdata"])[2] == ["L2.FFN"]

    app.radio(key=widget_key("dataset.metric")).set_value("mean_contribution").run()
    app.selectbox(key=widget_key("dataset.position_class")).set_value("first").run()
    assert values(chart_figure(app)["data"][0]["z"]) == component_grid(results, "mean_contribution", "first").heads.tolist()

    app.selectbox(key=widget_key("dataset.component")).set_value("L1.H2").run()
    expected = top_prompts(results, "L1.H2", "first")
    assert shown_prompts(app) == list(expected["prompt_id"])
    assert any("Where L1.H2 matters most" in md.value for md in app.markdown)


def test_two_folders_compare_as_a_difference_map(tiny_config, folders, monkeypatch):
    app = goto(start(tiny_config, monkeypatch), "dataset")
    app.text_input(key=widget_key("dataset.folder")).set_value(str(folders / "code")).run()
    app.text_input(key=widget_key("dataset.compare")).set_value(str(folders / "prose")).run()
    app.radio(key=widget_key("dataset.view")).set_value(page._VIEWS[2]).run()
    figure = chart_figure(app)
    expected = difference_grid(load_results(folders / "code"), load_results(folders / "prose"), "frequency")
    assert values(figure["data"][0]["z"]) == expected.heads.tolist()
    assert figure["layout"]["coloraxis"]["cmid"] == 0
    app.radio(key=widget_key("dataset.view")).set_value(page._VIEWS[1]).run()
    assert values(chart_figure(app)["data"][0]["z"]) == component_grid(load_results(folders / "prose")).heads.tolist()
    assert len(app.dataframe) == 2  # the component's top prompts in each folder
    assert set(shown_prompts(app, 0)) <= {"1", "2", "3"} and len(shown_prompts(app, 1)) > 0


def test_open_a_prompt_in_the_explorer(tiny_config, folders, monkeypatch):
    app = goto(start(tiny_config, monkeypatch), "dataset")
    app.text_input(key=widget_key("dataset.folder")).set_value(str(folders / "prose")).run()
    app.selectbox(key=widget_key("dataset.component")).set_value("L0.FFN").run()
    top = top_prompts(load_results(folders / "prose"), "L0.FFN")
    chosen = top.iloc[1]
    app.selectbox(key=widget_key("dataset.prompt")).set_value(chosen["prompt_id"]).run()
    app.button(key="dataset_prompt_open_button").click().run()
    assert not app.exception
    assert state(app).source.active.prompt == chosen["text"]
    assert state(app).route.position == chosen["top_target"]
    assert app.get("plotly_chart") and "nodes" in " ".join(c.value for c in app.caption)  # the Explorer's graph

    goto(app, "dataset")  # the page kept its folder and component
    assert app.text_input(key=widget_key("dataset.folder")).value == str(folders / "prose")
    assert app.selectbox(key=widget_key("dataset.component")).value == "L0.FFN"


def test_results_of_another_model_are_flagged_and_bad_folders_explained(tiny_config, folders, monkeypatch, tmp_path):
    app = goto(start(tiny_config, monkeypatch), "dataset")
    app.text_input(key=widget_key("dataset.folder")).set_value(str(folders / "gpt2")).run()
    assert any("made with tiny-gpt2; the Explorer shows tiny-llama" in w.value for w in app.warning)
    (tmp_path / "notes").mkdir()
    app.text_input(key=widget_key("dataset.folder")).set_value(str(tmp_path / "notes")).run()
    assert any("holds no llm-flow results" in error.value for error in app.error)
    assert not app.exception


def test_demo_mode_opens_no_folders(tiny_config, tmp_path, monkeypatch):
    config = json.loads(tiny_config.read_text())
    config["demo_mode"] = True
    config["prompts_file"] = str(tiny_config.parent / config["prompts_file"])
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps(config))
    app = goto(start(demo, monkeypatch), "dataset")
    assert any("results folders cannot be opened" in info.value for info in app.info)
    assert not app.text_input


def test_the_pages_own_keys_are_prefixed():
    own = [value for name, value in vars(page).items() if name.isupper() and isinstance(value, str)]
    assert own and all(value.startswith("dataset_") for value in own)


def test_each_prompt_list_opens_on_its_top_row(tiny_config, folders, monkeypatch):
    app = goto(start(tiny_config, monkeypatch), "dataset")
    lists = (widget_key("dataset.prompt"), widget_key("dataset.prompt_compare"))
    app.text_input(key=widget_key("dataset.folder")).set_value(str(folders / "code")).run()
    app.text_input(key=widget_key("dataset.compare")).set_value(str(folders / "prose")).run()
    for component in ("L0.FFN", "L1.H2", "L2.H0"):  # each orders the prompts differently
        app.selectbox(key=widget_key("dataset.component")).set_value(component).run()
        for key, name in zip(lists, ("code", "prose")):
            top = top_prompts(load_results(folders / name), component)
            assert app.selectbox(key=key).value == str(top["prompt_id"].iloc[0]), (component, name)
    prose = top_prompts(load_results(folders / "prose"), "L2.H0")
    app.selectbox(key=lists[1]).set_value(str(prose["prompt_id"].iloc[2])).run()
    app.radio(key=widget_key("dataset.metric")).set_value("mean_contribution").run()
    assert app.selectbox(key=lists[1]).value == str(prose["prompt_id"].iloc[2]), "a choice stays chosen"
    app.selectbox(key=widget_key("dataset.component")).set_value("L0.FFN").run()
    app.button(key="dataset_prompt_compare_open_button").click().run()
    top = top_prompts(load_results(folders / "prose"), "L0.FFN")
    assert state(app).source.active.prompt == top["text"].iloc[0], "the second folder's top prompt opens"

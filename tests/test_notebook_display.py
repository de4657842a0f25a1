"""Every result shows itself in a notebook: `_repr_html_` is valid HTML (a strict WHATWG parser),
`.show()` hands plotly a figure with data, `.to_frame()` gives numbers that agree with an
independent computation where one is cheap. Tiny models."""

from __future__ import annotations

import json
import math

import html5lib
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
import transformers

import llm_flow
from llm_flow.attribution import attribute
from llm_flow.dataset import Settings, analyse_dataset, load_results
from llm_flow.display import summary_html
from llm_flow.interventions import check_route
from llm_flow.views.sampling import SamplingSettings, sampling_stages
from tests.conftest import PROMPT

SHORT = "The capital of France is"


def assert_valid_html(text: str) -> None:
    html5lib.HTMLParser(strict=True).parseFragment(text)  # raises on any parse error


def assert_displays(result) -> go.Figure:
    """Valid summary HTML, a figure with traces, a DataFrame; returns the figure."""
    assert_valid_html(result._repr_html_())
    figure = result.figure()
    assert isinstance(figure, go.Figure) and len(figure.data) > 0
    assert isinstance(result.to_frame(), pd.DataFrame) and len(result.to_frame()) > 0
    return figure


def shown_figure(result, capsys) -> dict:
    """What `.show()` sends to the front end, through plotly's own JSON renderer."""
    pytest.importorskip("IPython")
    result.show(renderer="json")
    printed = capsys.readouterr().out
    bundle = eval(printed.strip(), {})  # IPython prints the raw mime bundle outside a kernel
    return json.loads(bundle["application/json"]) if isinstance(bundle["application/json"], str) else bundle["application/json"]


@pytest.fixture(scope="module")
def run(tiny_models):
    return tiny_models("gpt2").run(PROMPT)


def test_run(run, tiny_folders, capsys):
    figure = assert_displays(run)
    assert "next token" in run._repr_html_()
    frame = run.to_frame()
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_folders["gpt2"]).eval()
    with torch.no_grad():
        probs = torch.softmax(model(run.tokens[None]).logits[0].double(), -1)  # plain transformers
    following = run.tokens[1:]
    np.testing.assert_allclose(frame["next_probability"][:-1].astype(float), probs[:-1].gather(1, following[:, None])[:, 0], rtol=1e-4)
    assert frame["top_token_id"].tolist() == probs.argmax(-1).tolist()
    assert frame["next_rank"].tolist()[:-1] == [int((probs[i] > probs[i, t]).sum()) + 1 for i, t in enumerate(following.tolist())]
    assert pd.isna(frame["next_probability"].iloc[-1])
    np.testing.assert_allclose(figure.data[0].z[0], probs.max(-1).values, rtol=1e-4)  # top 1 row
    sent = shown_figure(run, capsys)
    assert sent["data"][0]["type"] == "heatmap"


def test_route(run, capsys):
    route = llm_flow.route(run, target=-1, threshold=0.04)
    assert route.graph is llm_flow.route(run).graph  # kept with the Run
    expected = llm_flow.build_graph(run, -1, 0.04)
    assert_displays(route)
    frame = route.to_frame()
    assert len(frame) == expected.number_of_edges()
    for row in frame.itertuples():
        assert math.isclose(row.weight, expected.edges[row.source, row.dest]["weight"])
    assert "top heads" in route._repr_html_() and "top FFN blocks" in route._repr_html_()
    assert shown_figure(route, capsys)["data"]


def test_attribution_shows_step_scores_beside_the_heatmap(tiny_models, capsys):
    result = attribute(tiny_models("llama"), SHORT, "saliency", generate=3, foil=" of")
    figure = assert_displays(result)
    scores = figure.data[1]
    assert list(scores.x) == [name.replace("_", " ") for name in result.step_scores]
    np.testing.assert_allclose(np.asarray(scores.customdata, dtype=float),
                               np.array(list(result.step_scores.values())).T)  # fmt: skip
    np.testing.assert_array_equal(figure.data[0].z, result.scores)
    assert "minus the foil" in result._repr_html_()
    assert shown_figure(result, capsys)["data"]


def test_route_check(run, capsys):
    check = check_route(run, llm_flow.build_graph(run), draws=2, seed=1)
    assert_displays(check)
    assert len(check.to_frame()) == 3 + 2 * 2
    assert "random removals" in check._repr_html_()
    assert shown_figure(check, capsys)["data"]


def test_dataset_results(tiny_models, tmp_path, capsys):
    analyse_dataset([SHORT, "One, two, three,"], tmp_path / "out", tiny_models("gpt2"), Settings(), progress=False)
    results = load_results(tmp_path / "out")
    figure = assert_displays(results)
    assert "2 analysed, 0 failed" in results._repr_html_()
    assert results.to_frame() is results.components
    heads = results.components.query("kind == 'head' and position_class == 'all'")
    grid = figure.data[0].z  # layers x heads
    for row in heads.itertuples():
        assert grid[row.layer][row.head] == pytest.approx(row.frequency)
    assert shown_figure(results, capsys)["data"]


def test_sampling_stages(run, capsys):
    stages = sampling_stages(run.logits[-1], SamplingSettings(0.7, 20, 0.8), run.model.decode_tokens)
    assert_displays(stages)
    frame = stages.to_frame()
    assert len(frame) == run.logits.shape[-1] and frame["probability"].sum() == pytest.approx(1.0, abs=1e-5)
    assert (frame["cut_by"] == "").sum() == stages.n_kept
    assert (frame["probability"] > 0).sum() == stages.n_kept
    expected = torch.softmax(run.logits[-1].double(), -1)[frame["token_id"].tolist()]
    np.testing.assert_allclose(frame["model_probability"], expected, rtol=1e-4)
    assert frame["token"].tolist()[:5] == run.model.decode_tokens(frame["token_id"].tolist()[:5])
    assert sampling_stages(run.logits[-1], SamplingSettings()).to_frame()["token"][0].startswith("#")
    assert shown_figure(stages, capsys)["data"]


def test_summary_escapes_text_and_stays_valid():
    text = summary_html("X", {"prompt": "<script>alert(1)</script> & </table> \x1e", "n": 3, "p": 0.123456,
                              "frame": pd.DataFrame({"a<b": ["</td>"] * 12})})  # fmt: skip
    assert_valid_html(text)
    assert "<script>" not in text and "2 more rows" in text and "0.1235" in text

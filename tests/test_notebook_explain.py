"""`llm_flow.explain`: one call gives the Explorer's main view (route graph, next-token table, top
heads and FFN blocks) as a figure a notebook draws. Tiny model; the predictions are checked
against plain transformers, the graph against `build_graph`."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
import transformers

import llm_flow
from llm_flow.errors import ArgumentError, PromptError
from llm_flow.figures.route import route_figure
from llm_flow.views.route_summary import summarize_route
from tests.conftest import PROMPT
from tests.test_notebook_display import assert_valid_html


def test_explain_draws_the_explorers_main_view(tiny_models, tiny_folders, monkeypatch):
    model = tiny_models("gpt2")
    explanation = llm_flow.explain(model, PROMPT, token=7, threshold=0.05)
    graph = llm_flow.build_graph(model.run(PROMPT), target=7, threshold=0.05)
    figure = explanation.figure()
    route_traces = [t for t in figure.data if not isinstance(t, go.Table)]
    expected = route_figure(graph).data
    assert len(route_traces) == len(expected)
    for mine, theirs in zip(route_traces, expected):
        assert list(mine.x) == list(theirs.x) and list(mine.y) == list(theirs.y)
    tables = [t for t in figure.data if isinstance(t, go.Table)]
    assert [list(t.header.values) for t in tables] == [["token", "probability"], ["layer", "head", "weight"],
                                                       ["layer", "token", "weight"]]  # fmt: skip

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_folders["gpt2"]).eval()
    with torch.no_grad():
        probs = torch.softmax(hf(model.run(PROMPT).tokens[None]).logits[0, 7].double(), -1)
    top = torch.topk(probs, 10)
    assert explanation.predictions["token_id"].tolist() == top.indices.tolist()
    np.testing.assert_allclose(explanation.predictions["probability"], top.values, rtol=1e-4)
    assert list(tables[0].cells.values[1]) == [f"{p:.1%}" for p in top.values.tolist()]

    summary = summarize_route(graph)
    assert [tuple(r) for r in explanation.heads[["layer", "head"]].itertuples(index=False)] == [(l, h) for l, h, _ in summary.heads]
    assert len(explanation.to_frame()) == graph.number_of_edges()
    assert_valid_html(explanation._repr_html_())
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")  # as in JupyterLab
    bundle = explanation._repr_mimebundle_()
    assert bundle["application/vnd.plotly.v1+json"]["data"][-1]["type"] == "table"


def test_explain_refuses_what_it_cannot_explain(tiny_models):
    with pytest.raises(ArgumentError, match="loaded by llm-flow"):
        llm_flow.explain("gpt2", PROMPT)
    with pytest.raises(PromptError):
        llm_flow.explain(tiny_models("gpt2"), "  ")
    with pytest.raises(ArgumentError, match="out of range"):
        llm_flow.explain(tiny_models("gpt2"), "One, two", token=40)

"""`llm-flow attention`, run the way users run it, on the tiny models of the test config."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ElementTree

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_flow.cli import main
from tests.test_cli import modules_loaded_by

PROMPT = "The capital of France is Paris. When Mary and John went"


def attention(config, *args) -> int:
    return main(["--config", str(config), "attention", "--prompt", PROMPT, *args])


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def test_head_view_writes_html_and_the_top_k_weights(tiny_config, tmp_path, capsys):
    html, csv = tmp_path / "head.html", tmp_path / "head.csv"
    assert attention(tiny_config, "--layer", "1", "--top-k", "2", "--html", str(html), "--csv", str(csv)) == 0
    printed = capsys.readouterr().out
    assert "Model   tiny-llama" in printed and "Strongest links" in printed and "Figure written" in printed
    page = html.read_text()
    assert "<title>tiny-llama · Layer 1: attention weight" in page and "<script" in page
    table = read(csv)
    assert set(table["layer"]) == {1} and set(table["head"]) == {f"head {h}" for h in range(4)}
    assert table.groupby(["head", "query"]).size().max() <= 2
    assert (table["source"] <= table["query"]).all()


def test_model_view_filters_layers_heads_and_window(tiny_config, tmp_path, capsys):
    csv = tmp_path / "model.csv"
    code = attention(tiny_config, "--view", "model", "--weight", "alti", "--layers", "0,2", "--heads", "1",
                     "--window", "5", "--query", "6", "--csv", str(csv))  # fmt: skip
    assert code == 0
    table = read(csv)
    assert set(table["layer"]) == {0, 2} and set(table["head"]) == {"head 1"}
    assert table["query"].between(4, 8).all() and table["source"].between(4, 8).all()
    assert (table["weight"] < 1).all()  # ALTI shares: the residual always keeps some


def test_neuron_view_softmax_matches_transformers(tiny_config, tiny_folders, tmp_path, capsys):
    csv = tmp_path / "neuron.csv"
    assert attention(tiny_config, "--view", "neuron", "--layer", "2", "--head", "3", "--query", "12", "--csv", str(csv)) == 0
    assert "the softmax equals the weights the model used" in capsys.readouterr().out
    table = read(csv)
    model = AutoModelForCausalLM.from_pretrained(tiny_folders["llama"], attn_implementation="eager").eval()
    tokens = AutoTokenizer.from_pretrained(tiny_folders["llama"])(PROMPT)["input_ids"]  # <bos> first
    with torch.no_grad():
        expected = model(torch.tensor([tokens]), output_attentions=True).attentions[2][0, 3, 12, :13]
    assert table["source"].tolist() == list(range(13))
    np.testing.assert_allclose(table["softmax"], expected.numpy(), atol=1e-5)


def test_neuron_view_exports_svg_and_png(tiny_config, tmp_path, capsys):
    svg, png = tmp_path / "neuron.svg", tmp_path / "neuron.png"
    code = attention(tiny_config, "--model", "tiny-gemma2", "--view", "neuron", "--layer", "0", "--window", "8",
                     "--svg", str(svg), "--png", str(png))  # fmt: skip
    if code == 2 and "Chromium" in capsys.readouterr().err:
        pytest.skip("no Chrome-family browser for SVG/PNG export")
    assert code == 0
    assert ElementTree.parse(svg).getroot().tag.endswith("svg")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000 and height > 300


@pytest.mark.parametrize(
    "args,message",
    [
        (["--view", "head"], "the head view needs --layer"),
        (["--view", "neuron", "--query", "3"], "the neuron view needs --layer"),
        (["--view", "model", "--window", "0"], "--window must be at least 1"),
        (["--layer", "0", "--top-k", "-2"], "--top-k must be at least 1"),
        (["--layer", "0", "--part", "B->B"], "part 'B->B' needs a split point"),
        (["--view", "model", "--heads", "one,two"], "--heads takes comma-separated integers"),
        (["--layer", "0", "--html", "out.png"], "--html out.png: the file name must end in .html"),
        (["--layer", "0", "--csv", "/nonexistent/dir/x.csv"], "cannot write /nonexistent/dir/x.csv"),
    ],
)
def test_argument_errors_answer_before_any_model_library_loads(tiny_config, args, message):
    code, loaded, err = modules_loaded_by(["attention", *args], tiny_config)
    assert code == 2 and not loaded, f"{args} imported {loaded}"
    assert f"llm-flow: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--layer", "9"], "layer 9 is out of range: the model has 3 layers"),
        (["--view", "neuron", "--layer", "0", "--head", "4"], "head 4 is out of range"),
        (["--view", "neuron", "--layer", "0", "--query", "99"], "target position 99 is out of range"),
        (["--layer", "0", "--split", "0"], "split 0 must be the position of sentence B's first token"),
    ],
)
def test_out_of_range_choices_are_one_clear_line(tiny_config, capsys, args, message):
    assert attention(tiny_config, *args) == 2
    err = capsys.readouterr().err
    assert f"llm-flow: error: {message}" in err and "Traceback" not in err


def test_head_view_query_keeps_only_that_tokens_lines_and_rows(tiny_config, tmp_path, capsys):
    csv = tmp_path / "focus.csv"
    assert attention(tiny_config, "--layer", "2", "--query", "7", "--weight", "norm", "--csv", str(csv)) == 0
    table = read(csv)
    assert set(table["query"]) == {7} and table["source"].max() <= 7


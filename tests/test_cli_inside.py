"""`llm-flow inside`, run the way users run it, on the tiny models of the test config."""

from __future__ import annotations

import re

import pytest

from llm_flow.cli import main
from llm_flow.views.inside import walkthrough
from tests.test_cli import modules_loaded_by

PROMPT = "The capital of France is Paris. When Mary and John went"


def inside(config, *args) -> int:
    return main(["--config", str(config), "inside", "--prompt", PROMPT, *args])


def test_writes_the_walk_through_as_one_standalone_page(tiny_config, tiny_models, tmp_path, capsys):
    page = tmp_path / "inside.html"
    assert inside(tiny_config, "--model", "tiny-gemma2", "--layer", "1", "--head", "2", "--token", "6",
                  "--html", str(page)) == 0  # fmt: skip
    printed = capsys.readouterr().out
    run = tiny_models("gemma2").run(PROMPT)
    walk = walkthrough(run, 1, 2, 6)
    assert "Block   1, head 2 (key/value head 1)" in printed
    for number, stage in enumerate(walk.stages, start=1):
        assert f"{number:>3}. {stage.title}: {stage.notice}" in printed  # the same numbers as the library's
    text = page.read_text()
    assert "<title>Inside tiny-gemma2: 'F' at token 6, layer 1, head 2</title>" in text
    assert text.count("<details open>") == len(walk.stages)
    assert text.count("<math") == len(walk.stages)  # every formula, as MathML
    assert "soft-cap" in text and "Post-attention" not in text  # Gemma's own stages, by their names
    assert text.count("llm-flow-figure-") >= 2 * len(walk.stages)
    assert not re.search(r"<script[^>]*src=[\"']https?:", text), "the page must open offline (plotly.js inside)"


def test_the_terminal_summary_needs_no_output_file(tiny_config, capsys):
    assert inside(tiny_config, "--model", "tiny-gpt2", "--temperature", "0") == 0
    printed = capsys.readouterr().out
    assert "Block   1, head 0\n" in printed and "Temperature, top-k, top-p, softmax" in printed
    assert "Walk-through written" not in printed


def test_a_layer_the_model_lacks_is_one_line(tiny_config, capsys):
    assert inside(tiny_config, "--layer", "7") == 2
    err = capsys.readouterr().err.strip().splitlines()  # loading progress, then the error
    assert err[-1] == "llm-flow: error: layer 7 is out of range: the model has 3 layers (use 0..2)"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--html", "walk.png"], "the file name must end in .html"),
        (["--html", "/nonexistent/dir/walk.html"], "does not exist"),
        (["--window", "0"], "--window must be at least 1"),
        (["--temperature", "-1"], "temperature"),
        (["--head", "-2"], "count from 0"),
    ],
)
def test_bad_arguments_are_refused_before_any_model_library_loads(tiny_config, args, message):
    code, loaded, err = modules_loaded_by(["inside", *args], tiny_config)
    assert code == 2 and not loaded, (loaded, err)
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_loads_no_model_library(tiny_config):
    code, loaded, err = modules_loaded_by(["inside", "--help"], tiny_config)
    assert code == 0 and not loaded, (loaded, err)

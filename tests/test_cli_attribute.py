"""`llm-flow attribute`, run the way users run it, on the tiny models of the test config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llm_flow.attribution import METHODS, attribute, load_attribution
from llm_flow.cli import main
from llm_flow.cli.attribute import METHOD_NAMES
from tests.test_cli import modules_loaded_by
from tests.test_generation import plain_generate, plain_model


def cli(config, *args: str) -> int:
    return main(["--config", str(config), "attribute", "--model", "tiny-llama", *args])


def test_json_output_is_the_library_result(tiny_config, tiny_models, tmp_path, capsys):
    out = tmp_path / "paris.json"
    code = cli(tiny_config, "--prompt", "The capital of France is", "--continuation", " Paris. The",
               "--method", "integrated_gradients", "--option", "n_steps=8", "--foil", " John", "--out", str(out))  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "Method  integrated_gradients {'n_steps': 8, 'baseline': 'zeros', 'keep_first': True, 'internal_batch_size': None}" in printed
    assert "explains the target's logit minus that of the foil ' John'" in printed
    assert "IG convergence delta" in printed and f"Written to {out}" in printed
    saved = load_attribution(out)
    # the same request through the library on the same model files
    direct = attribute(tiny_models("llama"), "The capital of France is", "integrated_gradients",
                       continuation=" Paris. The", foil=" John", n_steps=8)  # fmt: skip
    assert saved.token_ids == direct.token_ids and saved.foil == " John" and not saved.generated
    np.testing.assert_allclose(saved.scores, direct.scores, rtol=1e-5, atol=1e-7)
    assert saved.step_scores.keys() == direct.step_scores.keys()
    for name, values in direct.step_scores.items():
        assert saved.step_scores[name] == pytest.approx(values, rel=1e-5, abs=1e-7)
    assert printed.count("\nStep ") == saved.n_steps
    # progress on stderr, one line per step when it is not a terminal, with the time left
    n = saved.n_steps
    steps = [line for line in captured.err.splitlines() if line.startswith("Integrated gradients: step")]
    assert [line.split(",")[0] for line in steps] == [f"Integrated gradients: step {i} of {n}" for i in range(1, n + 1)]
    assert steps[0].endswith(" left") and steps[-1] == f"Integrated gradients: step {n} of {n}"


def test_generated_words_to_csv_and_html(tiny_config, tmp_path, capsys):
    csv, page = tmp_path / "a.csv", tmp_path / "a.html"
    assert cli(tiny_config, "--generate", "3", "--method", "attention", "--option", "heads=max",
               "--words", "--out", str(csv)) == 0  # fmt: skip
    table = pd.read_csv(csv)
    assert set(table["step"]) == {0, 1, 2} and {"source", "score", "probability", "entropy"} <= set(table.columns)
    assert "continuation generated" in capsys.readouterr().out
    assert cli(tiny_config, "--generate", "2", "--method", "alti_rollout", "--out", str(page)) == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "plotly" in text and text.count("<h3>") == 2


def test_generated_continuation_is_transformers_greedy_generation(tiny_config, tiny_folders, tmp_path):
    out = tmp_path / "generated.json"
    assert cli(tiny_config, "--prompt", "The capital of France is", "--generate", "5", "--method", "attention",
               "--out", str(out)) == 0  # fmt: skip
    saved = load_attribution(out)
    prompt_ids = saved.token_ids[: saved.n_prompt]
    expected = plain_generate(plain_model(tiny_folders["llama"]), prompt_ids, 5, do_sample=False)
    assert saved.generated and saved.token_ids[saved.n_prompt :] == expected


def test_help_lists_every_registered_method(tiny_config, capsys):
    assert METHOD_NAMES == tuple(METHODS)
    with pytest.raises(SystemExit):
        main(["attribute", "--help"])
    printed = capsys.readouterr().out.replace("\n", " ")
    assert all(name in printed for name in METHODS)


@pytest.mark.parametrize("args, message", [
    (["--method", "lime"], "unknown attribution method 'lime': use one of saliency, input_x_gradient"),
    (["--option", "steps"], "--option takes KEY=VALUE"),
    (["--option", "steps=3"], "integrated_gradients has no option 'steps'"),
    (["--out", "result.txt"], "--out must end in .json, .csv, .html"),
    (["--out", "/nonexistent/dir/a.json"], "cannot write /nonexistent/dir/a.json: the folder /nonexistent/dir does not exist"),
    (["--foil", " Mary"], "the foil ' Mary' is 2 tokens"),
    (["--generate", "0"], "the number of tokens to generate must be 1..64"),
    (["--prompt", " "], "the prompt is empty"),
])  # fmt: skip
def test_errors_are_one_clear_line(tiny_config, capsys, args, message):
    assert cli(tiny_config, *args) == 2
    err = capsys.readouterr().err
    assert f"llm-flow: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["attribute", "--help"], ["attribute", "--out", "x.txt"], ["attribute", "--prompt", ""]])
def test_help_and_argument_errors_load_no_model_libraries(tiny_config, args):
    code, loaded, err = modules_loaded_by(args, tiny_config)
    assert not loaded, f"{args} imported {loaded}"
    assert code in (0, 2), err

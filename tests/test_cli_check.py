"""``llm-flow routes --check``: the route re-run on the model, printed and written as CSV."""

from __future__ import annotations

import pandas as pd
import pytest

from llm_flow.cli import main
from llm_flow.interventions import THRESHOLDS
from llm_flow.wording import probability
from tests.test_cli import modules_loaded_by

PROMPT = "The capital of France is"


def test_check_prints_the_three_results_and_writes_csv(tiny_config, tmp_path, capsys):
    check_csv, curve_csv = tmp_path / "check.csv", tmp_path / "curve.csv"
    code = main(["--config", str(tiny_config), "routes", "--model", "tiny-llama", "--prompt", PROMPT,
                 "--check", "--draws", "3", "--seed", "4", "--check-csv", str(check_csv),
                 "--curve-csv", str(curve_csv)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for condition in ("unmodified", "route only", "random only", "route removed", "random removed"):
        assert any(line.startswith(f"  {condition:<16} p = ") for line in printed.splitlines()), condition
    assert "3 random draws each, seed 4" in printed and "over 3 draws" in printed
    assert "Meaning the route alone gives" in printed

    check = pd.read_csv(check_csv, keep_default_na=False)
    assert list(check["condition"]) == ["unmodified", "route only", "route removed"] + ["random only"] * 3 + [
        "random removed"] * 3  # fmt: skip
    assert check["probability"].between(0, 1).all() and (check["rank"] >= 1).all()
    assert int(check.loc[0, "rank"]) == 1, "the reported token is the model's top prediction"
    assert set(check["seed"]) == {4}
    # The printed probabilities are the CSV's, in the one format that keeps small values.
    lines = {line[2:18].strip(): line for line in printed.splitlines() if line.startswith("  ") and " p = " in line}
    for row in check[check["condition"].isin(["unmodified", "route only", "route removed"])].itertuples():
        assert f"p = {probability(row.probability):>8}   logit" in lines[row.condition]
    assert check["probability"].min() < 0.01 and "0.0000" not in printed

    curve = pd.read_csv(curve_csv)
    assert list(curve["threshold"]) == list(THRESHOLDS)
    assert curve["probability"].between(0, 1).all()
    assert curve["edges"].is_monotonic_decreasing


@pytest.mark.parametrize(
    "args, message",
    [
        (["--check", "--draws", "0"], "--draws must be 1..1000"),
        (["--check-csv", "x.csv"], "--check-csv needs --check"),
        (["--check", "--curve-csv", "curve.txt"], "--curve-csv curve.txt: the file name must end in .csv"),
        (["--check", "--check-csv", "/nonexistent/dir/c.csv"], "cannot write /nonexistent/dir/c.csv"),
    ],
)
def test_bad_check_options_are_refused_before_loading_anything(tiny_config, args, message):
    code, loaded, err = modules_loaded_by(["routes", *args], tiny_config)
    assert code == 2 and not loaded, err
    assert message in err and "Traceback" not in err


def test_check_is_in_the_help(tiny_config, capsys):
    with pytest.raises(SystemExit):
        main(["routes", "--help"])
    assert "--check" in capsys.readouterr().out


def test_an_encoders_mask_prediction_is_checked(tmp_path, capsys):
    """On a masked-LM encoder the check is of the prediction at the [MASK] (the route's default
    target), with the library's numbers."""
    import json

    import llm_flow
    from llm_flow.interventions import check_route
    from tests.tiny_models import save_tiny_model

    folder = save_tiny_model("bert", tmp_path / "bert")
    config = tmp_path / "local.json"
    config.write_text(json.dumps({"default_model": "bert", "models": {"bert": {"source": str(folder)}}}))
    prompt, check_csv = "The capital of France is [MASK]. Paris is big.", tmp_path / "check.csv"
    code = main(["--config", str(config), "routes", "--prompt", prompt, "--check", "--draws", "2",
                 "--check-csv", str(check_csv)])  # fmt: skip
    assert code == 0
    run = llm_flow.load_model(str(folder)).run(prompt)
    mask = run.str_tokens.index("[MASK]")
    assert f"at position {mask}, re-running the model" in capsys.readouterr().out
    expected = check_route(run, llm_flow.build_graph(run, mask), draws=2).draws_table()
    written = pd.read_csv(check_csv, keep_default_na=False)
    assert set(written["position"]) == {mask}
    assert written["probability"].tolist() == pytest.approx(expected["probability"].tolist(), rel=1e-5)

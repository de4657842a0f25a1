"""`llm-flow faithfulness`, run the way users run it, on the tiny models of the test config."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from llm_flow.cli import main
from llm_flow.faithfulness import SCORERS, AblationSpec, Alti, Random, budget_curve, prepare
from llm_flow.faithfulness.settings import SCORER_NAMES
from tests.test_cli import modules_loaded_by
from tests.test_faithfulness import CLEAN, COUNTERFACTUAL

ONE = ["--prompt", CLEAN, "--counterfactual", COUNTERFACTUAL, "--answer", " John", "--foil", " a"]


def cli(config, *args: str) -> int:
    return main(["--config", str(config), "faithfulness", "--model", "tiny-llama", *args])


def test_one_prompt_prints_the_table_and_writes_the_library_curves(tiny_config, tiny_models, tmp_path, capsys):
    out = tmp_path / "curve.csv"
    assert cli(tiny_config, *ONE, "--scorer", "alti,random", "--seed", "3", "--smallest", "0.8", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.columns[:6]) == ["scorer", "ablation", "budget", "edges", "metric", "faithfulness"]
    assert table.groupby("scorer").size().to_dict() == {"alti": 10, "random[seed=3]": 10}
    problem = prepare(tiny_models("llama").run(CLEAN), " John", " a", AblationSpec("patching", counterfactual=COUNTERFACTUAL))
    direct = budget_curve(problem, Random(seed=3))
    rows = table[table["scorer"] == "random[seed=3]"]
    assert rows["faithfulness"].tolist() == pytest.approx(list(direct.faithfulness), abs=1e-6)
    assert rows["edges"].tolist() == list(direct.edges) and rows["ablation"].eq("patching").all()
    assert f"full graph {len(problem.edges):,} edges" in printed
    cpr_line = next(line for line in printed.splitlines() if line.strip().startswith("CPR"))
    assert f"{direct.cpr:.3f}" in cpr_line
    assert "Smallest alti circuit with f >= 0.8" in printed and "route threshold" in printed


def test_alti_can_rank_the_edges_patching_cannot_change_last(tiny_config, tiny_models, tmp_path):
    out = tmp_path / "curve.csv"
    later = CLEAN.replace("store,", "store.")  # the prompts part at the comma
    assert cli(tiny_config, *ONE[:2], "--counterfactual", later, *ONE[4:], "--scorer", "alti", "--alti-changed-only",
               "--out", str(out)) == 0  # fmt: skip
    table = pd.read_csv(out)
    problem = prepare(tiny_models("llama").run(CLEAN), " John", " a", AblationSpec("patching", counterfactual=later))
    direct = budget_curve(problem, Alti(changed_only=True))
    assert table["scorer"].eq("alti[changed_only=True]").all()
    assert table["faithfulness"].tolist() == pytest.approx(list(direct.faithfulness), abs=1e-6)
    assert direct.faithfulness != budget_curve(problem, Alti()).faithfulness


def test_a_pair_file_reports_mean_spread_and_pooled_curves(tiny_config, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    records = [
        {"id": "a", "task": "names", "clean": CLEAN, "counterfactual": COUNTERFACTUAL, "answer": " John", "foil": " a"},
        {"id": "b", "clean": "One, two, three, four", "counterfactual": "One, two, three, five", "answer": ",", "foil": " a"},
        {"id": "c", "clean": CLEAN, "counterfactual": COUNTERFACTUAL, "answer": " Mary", "foil": " a"},  # 2 tokens
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "pairs.csv"
    assert cli(tiny_config, "--pairs", str(pairs), "--scorer", "eap,random", "--ablation", "zero", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "2 of 3 evaluated" in printed and "skipped c: the answer ' Mary' is 2 tokens" in printed
    assert "pooled CPR" in printed and "nan" not in printed
    table = pd.read_csv(out)
    assert set(table["pair"]) == {"a", "b"} and len(table) == 2 * 2 * 10
    assert table.loc[table["pair"] == "a", "task"].eq("names").all() and table["ablation"].eq("zero").all()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed (pip install "llm-flow[scale]")')
def test_a_pair_file_on_ray_writes_the_in_process_curves(tiny_config, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    records = [{"id": n, "clean": clean, "counterfactual": other, "answer": " John", "foil": " a"}
               for n, (clean, other) in enumerate([(CLEAN, COUNTERFACTUAL), (COUNTERFACTUAL, CLEAN)])]  # fmt: skip
    pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
    for engine in ("inprocess", "ray"):
        more = ["--engine", "ray", "--workers", "2"] if engine == "ray" else []
        assert cli(tiny_config, "--pairs", str(pairs), "--scorer", "alti,eap", "--out", str(tmp_path / f"{engine}.csv"), *more) == 0
        assert f"2 of 2 evaluated from {pairs}; ablation patching, metric logit_diff; engine {engine}" in capsys.readouterr().out
    here, there = (pd.read_csv(tmp_path / f"{engine}.csv") for engine in ("inprocess", "ray"))
    pd.testing.assert_frame_equal(there, here, rtol=1e-4, atol=1e-5)


def test_scorer_names_are_the_registry(capsys):
    assert SCORER_NAMES == tuple(SCORERS)
    with pytest.raises(SystemExit):
        main(["faithfulness", "--help"])
    printed = capsys.readouterr().out.replace("\n", " ")
    assert all(name in printed for name in SCORERS)


@pytest.mark.parametrize("args, message", [
    ([*ONE[:2], "--counterfactual", CLEAN + " John", *ONE[4:]],
     "patching needs prompts of the same length: the prompt is 32 tokens, the counterfactual 33 tokens"),
    ([*ONE, "--scorer", "alti,ig"], "unknown scorer 'ig': use alti, eap, eap-ig, random"),
    ([*ONE, "--reference", "x.jsonl"], "--reference is for --ablation mean, not patching"),
    ([*ONE, "--out", "curve.txt"], "--out curve.txt: the file name must end in .csv"),
    (ONE[:4], "give --answer and --foil"),
    ([*ONE[:2], *ONE[4:]], "patching needs a counterfactual prompt"),
    ([*ONE, "--smallest", "1.5"], "--smallest must be in (0, 1]"),
    (["--pairs", "pairs.jsonl", "--answer", " x"], "--answer is for one --prompt"),
    (["--pairs", "missing.jsonl"], "pair file not found: missing.jsonl"),
    ([*ONE[:6], "--foil", " Mary"], "the foil ' Mary' is 2 tokens"),
    ([*ONE, "--engine", "ray"], "--engine ray is for --pairs; one prompt runs in-process"),
    (["--pairs", "pairs.jsonl", "--workers", "2"], "workers and address are for the Ray engine"),
    (["--pairs", "pairs.jsonl", "--engine", "ray", "--workers", "0"], "workers must be a whole number >= 1"),
])  # fmt: skip
def test_errors_are_one_clear_line(tiny_config, capsys, args, message):
    assert cli(tiny_config, *args) == 2
    err = capsys.readouterr().err
    assert f"llm-flow: error: {message}" in err and "Traceback" not in err


def test_a_bad_pair_line_is_named(tiny_config, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"clean": "a", "counterfactual": "b", "answer": "c", "foil": "d"}) + "\n{oops\n")
    assert cli(tiny_config, "--pairs", str(pairs)) == 2
    assert f"{pairs}, line 2: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["faithfulness", "--help"],
    ["faithfulness", *ONE, "--out", "x.txt"],
    ["faithfulness", "--pairs", "missing.jsonl"],
    ["faithfulness", "--pairs", "missing.jsonl", "--engine", "ray"],
])  # fmt: skip
def test_help_and_argument_errors_load_no_model_libraries(tiny_config, args):
    code, loaded, err = modules_loaded_by(args, tiny_config)
    assert not loaded, f"{args} imported {loaded}"
    assert code in (0, 2), err

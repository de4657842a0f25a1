"""``llm-flow dataset``, run the way users run it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from llm_flow.cli import main
from tests.test_cli import modules_loaded_by


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [{"id": "a", "text": "The capital of France is"}, {"id": "b", "text": ""}, {"id": "c", "text": "One, two, three"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_dataset_writes_the_results_folder_and_resumes(tiny_config, prompt_file, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["--config", str(tiny_config), "dataset", "--model", "tiny-gpt2", "--prompts", str(prompt_file),
            "--positions", "all", "--threshold", "0.05", "--out", str(out)]  # fmt: skip
    html = tmp_path / "heads.html"
    assert main(args + ["--html", str(html)]) == 0
    printed = capsys.readouterr().out
    assert "Analysed 3 prompts (0 already done" in printed
    assert "2 ok, 1 error, " in printed and "Errors  first: prompt b: the prompt is empty" in printed
    assert "Heads   most often on a route: L" in printed and "FFNs    most often on a route: L" in printed
    prompts = pq.read_table(out / "prompts.parquet").to_pandas()
    assert list(prompts["prompt_id"]) == ["a", "b", "c"] and list(prompts["status"]) == ["ok", "error", "ok"]
    assert prompts.loc[0, "n_targets"] == prompts.loc[0, "n_tokens"]  # --positions all
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["config"]["model"] == "tiny-gpt2" and metadata["config"]["threshold"] == 0.05
    assert metadata["config"]["max_prompt_tokens"] == 64  # the config's limit
    stats = pq.read_table(out / "components.parquet").to_pandas()
    assert stats["graphs"].iloc[0] == prompts["n_targets"].sum()
    page = html.read_text()
    assert f"Figure written to {html}" in printed and "L0.H0" in page and "results (tiny-gpt2, 2 prompts" in page

    assert main(args) == 0  # again: nothing left but the error row, which is retried
    assert "Analysed 1 prompt (2 already done" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "3"], "the threshold must be a number from 0.001 to 0.5"),
        (["--workers", "2"], "workers and address are for the Ray engine"),
        (["--engine", "ray", "--workers", "0"], "workers must be a whole number >= 1"),
        (["--top", "0"], "--top must be at least 1"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--svg", "heads.png"], "--svg heads.png: the file name must end in .svg"),
        (["--html", "/no/such/dir/h.html"], "cannot write /no/such/dir/h.html"),
    ],
)
def test_bad_options_are_one_clear_line(tiny_config, prompt_file, tmp_path, capsys, extra, message):
    args = ["--config", str(tiny_config), "dataset", "--prompts", str(prompt_file), "--out", str(tmp_path / "o")]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert f"llm-flow: error: {message}" in err and "Traceback" not in err


def test_a_folder_made_with_other_settings_is_refused(tiny_config, prompt_file, tmp_path, capsys):
    out = tmp_path / "results"
    base = ["--config", str(tiny_config), "dataset", "--prompts", str(prompt_file), "--out", str(out)]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--positions", "all"]) == 2
    assert "holds results made with positions 'last' (now 'all')" in capsys.readouterr().err


def test_targets_is_the_old_name_of_positions_and_old_folders_still_resume(tiny_config, prompt_file, tmp_path, capsys):
    """Results folders written before the rename record "targets": they resume under --positions,
    are refused with the new name when the setting differs, and read as before; the old flag
    still works and says the new name."""
    from llm_flow.dataset import load_results

    out = tmp_path / "results"
    base = ["--config", str(tiny_config), "dataset", "--prompts", str(prompt_file), "--out", str(out)]
    assert main(base + ["--targets", "all"]) == 0
    assert "--targets is now called --positions" in capsys.readouterr().err
    metadata_file = out / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    assert metadata["config"]["positions"] == "all"
    metadata["config"]["targets"] = metadata["config"].pop("positions")  # as an older llm-flow wrote it
    metadata_file.write_text(json.dumps(metadata))
    assert "every token" in load_results(out).label
    assert main(base + ["--positions", "last"]) == 2
    assert "holds results made with positions 'all' (now 'last')" in capsys.readouterr().err
    assert main(base + ["--positions", "all"]) == 0
    assert "(2 already done" in capsys.readouterr().out
    assert json.loads(metadata_file.read_text())["config"]["positions"] == "all"


@pytest.mark.parametrize(
    "args",
    [
        ["dataset", "--help"],
        ["dataset", "--prompts", "/nonexistent/p.jsonl", "--out", "/tmp/llm-flow-never"],
        ["dataset", "--prompts", "PROMPTS", "--out", "OUT", "--threshold", "5"],
        ["dataset", "--prompts", "PROMPTS", "--out", "OUT", "--positions", "first"],
        ["dataset", "--prompts", "PROMPTS", "--out", "NOT_A_RESULTS_FOLDER"],
    ],
)
def test_help_and_argument_errors_load_no_model_libraries(tiny_config, prompt_file, tmp_path, args):
    cluttered = tmp_path / "mine"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("not results")
    replace = {"PROMPTS": str(prompt_file), "OUT": str(tmp_path / "o"), "NOT_A_RESULTS_FOLDER": str(cluttered)}
    code, loaded, err = modules_loaded_by([replace.get(a, a) for a in args], tiny_config)
    assert not loaded, f"{args} imported {loaded}"
    assert code in (0, 2), err
    if code == 2:  # one line from llm-flow, or argparse's usage and one error line
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(("llm-flow: error: ", "llm-flow dataset: error: "))

"""`llm-flow generate`, run the way users run it, against plain `transformers` generation."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_flow.cli import main
from tests.test_cli import modules_loaded_by

PROMPT = "The capital of France is"
PROBABILITY = r"([\d.]+%|[\d.]+e-\d+|0)"  # as llm_flow.wording.probability prints it
ROW = re.compile(rf"^\s*(\d+)\s+(\d+)\s+('.*?'|\".*?\")\s+{PROBABILITY}\s+{PROBABILITY}\s+(\d+)")


def parse_probability(text: str) -> float:
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def rows(printed: str) -> list[tuple[int, str, float, float, int]]:
    """(position, token repr, p drawn, p model, rank) of each printed token line."""
    return [
        (int(m[2]), m[3], parse_probability(m[4]), parse_probability(m[5]), int(m[6]))
        for m in map(ROW.match, printed.splitlines())
        if m
    ]


def test_greedy_tokens_and_probabilities_match_transformers(tiny_config, tiny_folders, capsys):
    code = main(["--config", str(tiny_config), "generate", "--model", "tiny-qwen2", "--prompt", PROMPT,
                 "--max-new-tokens", "6", "--temperature", "0"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Sampling  greedy" in printed and "Stopped   after 6 tokens: the requested number" in printed
    folder = str(tiny_folders["qwen2"])
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                             output_scores=True, return_dict_in_generate=True)  # fmt: skip
    new = out.sequences[0, ids.shape[1] :].tolist()
    table = rows(printed)
    assert [r[0] for r in table] == list(range(ids.shape[1], ids.shape[1] + 6))
    assert [r[1] for r in table] == [repr(tokenizer.decode([t])) for t in new]
    for (_, _, drawn, p_model, rank), scores, token in zip(table, out.scores, new):
        assert drawn == 1.0 and rank == 1  # ranks count from 1: the model's top token
        assert p_model == pytest.approx(float(torch.softmax(scores[0], -1)[token]), abs=1e-4)
    text = tokenizer.decode(out.sequences[0], skip_special_tokens=True)
    assert f"Text      {text!r}" in printed or "tokenises differently" in printed


def test_a_seed_makes_the_continuation_reproducible(tiny_config, capsys):
    args = ["--config", str(tiny_config), "generate", "--model", "tiny-gpt2", "--prompt", PROMPT,
            "--max-new-tokens", "8", "--temperature", "1.3", "--top-k", "30", "--top-p", "0.9"]  # fmt: skip
    outputs = []
    for seed in ("4", "4", "5"):
        assert main([*args, "--seed", seed]) == 0
        outputs.append(rows(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    assert all(0 < r[2] <= 1 for r in outputs[0])


def test_the_prompt_length_limit_stops_generation(tiny_config, tiny_folders, capsys):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_folders["llama"]))
    long_prompt = "One, two, three,"
    while len(tokenizer(long_prompt + " One, two, three,")["input_ids"]) < 64:
        long_prompt += " One, two, three,"  # just under the config's limit of 64 tokens
    assert main(["--config", str(tiny_config), "generate", "--prompt", long_prompt, "--max-new-tokens", "50",
                 "--temperature", "0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "the text reached the configured limit (limits.max_prompt_tokens) of 64 tokens" in printed
    assert rows(printed)[-1][0] == 63


@pytest.mark.parametrize(
    "args,message",
    [
        (["--temperature", "-1"], "temperature must be a number >= 0"),
        (["--top-k", "-2"], "top-k must be a whole number >= 0"),
        (["--top-p", "1.5"], "top-p must be a number between 0 and 1"),
        (["--seed", "-1"], "the seed must be a whole number >= 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--prompt", " "], "the prompt is empty"),
        (["--prompt", "One, two, three, " * 30], "over the configured limit"),
    ],
)
def test_errors_are_one_clear_line(tiny_config, capsys, args, message):
    assert main(["--config", str(tiny_config), "generate", *args]) == 2
    err = capsys.readouterr().err
    assert "llm-flow: error: " in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["generate", "--help"], ["generate", "--top-p", "3"], ["generate", "--seed", "-4"]])
def test_help_and_argument_errors_load_no_model_libraries(tiny_config, args):
    code, loaded, err = modules_loaded_by(args, tiny_config)
    assert not loaded, f"{args} imported {loaded}"
    assert code in (0, 2) and "Traceback" not in err

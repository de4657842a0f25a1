"""Every input error the library raises is an `LlmFlowError` with a message that says what to fix:
checked in the source (no bare built-in exceptions) and on the views' inputs."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
import torch

from llm_flow.errors import ArgumentError
from llm_flow.routes.proximity import head_proximities
from llm_flow.views.heads import attention_map, contribution_map, edge_heads
from llm_flow.views.logit_lens import logit_lens
from llm_flow.views.neurons import top_neurons
from llm_flow.views.promoted import head_output, neuron_output, promoted_tokens
from tests.conftest import PROMPT, REPO

BUILTIN_ERRORS = {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)}
# pydantic turns these into one ConfigError naming the key; AttributeError is the module protocol
ALLOWED = {("config.py", "ValueError"), ("__init__.py", "AttributeError"),
           # the derived store's contract with the code that calls it (keys are frozen dataclasses,
           # None means "not computed"): a programming error, never something a user typed
           ("derived.py", "TypeError"), ("derived.py", "ValueError")}


def raised_names(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(call, ast.Name):
                found.append((node.lineno, call.id))
    return found


def test_the_library_raises_no_bare_builtin_exceptions():
    offenders = [
        f"{path.relative_to(REPO)}:{line} raises {name}"
        for path in sorted((REPO / "llm_flow").rglob("*.py"))
        for line, name in raised_names(path)
        if name in BUILTIN_ERRORS and (path.name, name) not in ALLOWED
    ]
    assert offenders == []


@pytest.fixture(scope="module")
def run(tiny_models):
    return tiny_models("llama").run(PROMPT)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda run: logit_lens(run, "M", 0, 0), r"node kind 'M' .* use X, A or I"),
        (lambda run: edge_heads(run, 0, source=5, position=3), r"source 5 is out of range.*0\.\.3"),
        (lambda run: attention_map(run, 0, head=4), r"head 4 is out of range.*4 heads"),
        (lambda run: contribution_map(run, 0, head=-1), r"head -1 is out of range"),
        (lambda run: head_output(run, 0, 2, head=9), r"head 9 is out of range"),
        (lambda run: neuron_output(run, 0, 2, neuron=96), r"neuron 96 is out of range.*96 neurons"),
        (lambda run: top_neurons(run, 0, 2, k=0), r"at least 1"),
        (lambda run: promoted_tokens(run.model, run.layers[0].mlp_out[0], k=-3), r"at least 1"),
        (lambda run: logit_lens(run, "I", 0, 0, k=0), r"at least 1"),
        (lambda run: logit_lens(run, "I", 7, 0), r"layer 7 is out of range"),
    ],
)
def test_bad_view_inputs_are_argument_errors(run, call, message):
    with pytest.raises(ArgumentError, match=message):
        call(run)


def test_parallel_blocks_name_their_residual_nodes(tiny_models):
    with pytest.raises(ArgumentError, match="use X or I"):
        logit_lens(tiny_models("gpt_neox").run(PROMPT), "A", 0, 0)


def test_unknown_kernel_is_an_argument_error():
    whole, vectors = torch.randn(2, 8), torch.randn(3, 2, 8)
    with pytest.raises(ArgumentError, match="'auto', 'numba' or 'torch'"):
        head_proximities(whole, None, vectors, torch.rand(2, 2, 3), torch.tensor([1, 2]), method="fast")

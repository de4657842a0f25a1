"""A pytest plugin for mutation testing only (`pytest_add_cli_args` in pyproject's [tool.mutmut]).

mutmut runs the tests of every mutant in a process forked from one that has collected them.
Imported there, this loads one tiny model of every family through llm-flow and through plain
transformers, so the modules those loads import on first use (TransformerLens' bridge, each
architecture) are imported once, not once per mutant (6 s each on the development machine).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import llm_flow
from tests.reference import reference_model
from tests.tiny_models import FAMILIES, save_tiny_model

# One intra-op thread: a process forked from one whose OpenMP team has run waits forever at the
# team's barrier (gomp_team_barrier_wait_end) the first time a child multiplies two tensors.
torch.set_num_threads(1)

with tempfile.TemporaryDirectory() as root:
    for family in FAMILIES:
        folder = save_tiny_model(family, Path(root) / family)
        llm_flow.load_model(str(folder)).run("warm up")
        reference_model(str(folder))
